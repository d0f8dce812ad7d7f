"""python -m geojax.geo: the chain, the distance to the named city, and the far-from-any-city and at-sea flags."""
import subprocess
import sys

from geojax.geo.__main__ import main


def _lines(capsys, *argv):
  assert main([*argv]) == 0
  return capsys.readouterr().out.splitlines()


def test_city_on_land_gets_no_flag():
  out = subprocess.run([sys.executable, "-m", "geojax.geo", "48.8566", "2.3522"], capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [
    "Country: France / State: Ile-de-France / City: Paris / Coordinates: (48.856600, 2.352200)",
    "Continent: Europe",
    "Named city: Paris, France, 0.4 km away"]
  bad = subprocess.run([sys.executable, "-m", "geojax.geo", "95", "0"], capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and "out of range" in bad.stderr


def test_south_pole_is_far_from_the_named_city_and_the_nearest_on_the_sphere_is_reported(capsys):
  lines = _lines(capsys, "-90", "0")
  assert "City: Grytviken" in lines[0]  # reverse_geocoder's degrees metric, kept for the labels
  assert lines[2] == "Named city: Grytviken, South Georgia and the South Sandwich Islands, 3971.8 km away"
  assert lines[3].startswith("Far from any city: none within 500 km; nearest on the sphere: McMurdo Station, "
                             "Antarctica, 1351.5 km away")
  assert not any(line.startswith("At sea") for line in lines)  # Antarctica is land
  assert not any(line.startswith("Far") for line in _lines(capsys, "-90", "0", "--far_km", "2000"))


def test_open_ocean_is_flagged_at_sea(capsys):
  lines = _lines(capsys, "0", "-140")
  assert lines[2] == "Named city: Taiohae, French Polynesia, 990.9 km away"
  assert lines[3] == "Far from any city: none within 500 km"  # Taiohae is also the nearest on the sphere
  assert lines[4].startswith("At sea (land mask)")


def test_a_nearer_city_on_the_sphere_is_named_even_when_not_far(capsys):
  lines = _lines(capsys, "60.77", "130.81")  # Yakutia: degrees favour Mayya, the sphere Amga
  assert "City: Mayya" in lines[0]
  assert lines[3].startswith("Nearest on the sphere: Amga, Russia, 65.0 km away") and len(lines) == 4


def test_the_antimeridian_splits_the_degrees_metric_but_not_the_sphere(capsys):
  """(0, 180) and (0, -180) are one point: the sphere gives Kulia Village for both, degrees only for the first."""
  east, west = _lines(capsys, "0", "180"), _lines(capsys, "0", "-180")
  assert "City: Kulia Village" in east[0] and east[3] == "Far from any city: none within 500 km"
  assert "City: Atafu Village" in west[0]
  assert "; nearest on the sphere: Kulia Village, Tuvalu, 740.9 km away" in west[3]
  assert east[4].startswith("At sea") and west[4].startswith("At sea")
