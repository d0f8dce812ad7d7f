"""Free-text place names -> gazetteer ids and coordinates (the offline stand-in for a commercial geocoder)."""
from __future__ import annotations

import dataclasses

import numpy as np

from geojax.geo import names


@dataclasses.dataclass
class Lookups:
  country: dict[str, int]
  admin1: dict[str, list[int]]  # normalized name -> admin1 ids, most cities first
  admin1_loose: dict[str, list[int]]  # same, keyed with decorating words removed
  city: dict[str, np.ndarray]  # normalized name -> rows, most prominent first
  city_loose: dict[str, np.ndarray]
  country_of_admin1: np.ndarray
  country_of_row: np.ndarray
  admin1_of_row: np.ndarray
  best_row_of_admin1: np.ndarray
  best_row_of_country: np.ndarray
  us_country: int


def _group(keys: list[str], order: np.ndarray) -> dict[str, np.ndarray]:
  """key -> indices (in `order`'s order) for every index; empty keys skipped."""
  table: dict[str, list[int]] = {}
  for i in order.tolist():
    k = keys[i]
    if k:
      table.setdefault(k, []).append(i)
  return {k: np.array(v, dtype=np.int64) for k, v in table.items()}


def _best_per_group(group_of_row: np.ndarray, n_groups: int, prominence: np.ndarray) -> np.ndarray:
  order = np.lexsort((-prominence, group_of_row))  # by group, most prominent first
  best = np.full(n_groups, -1, dtype=np.int64)
  first = np.ones(len(order), dtype=bool)
  first[1:] = group_of_row[order][1:] != group_of_row[order][:-1]
  best[group_of_row[order][first]] = order[first]
  return best


def build_lookups(gaz) -> Lookups:
  import pycountry
  country: dict[str, int] = {}

  def add_country(text, cid):
    key = names.normalize(text)
    for variant in names.name_variants(key):
      if variant:
        country.setdefault(variant, cid)

  for cid, code in enumerate(gaz.country_codes.tolist()):
    add_country(gaz.country_names[cid], cid)
    record = pycountry.countries.get(alpha_2=code)
    if record is not None:
      for attr in ("name", "common_name", "official_name"):
        value = getattr(record, attr, None)
        if value:
          add_country(value, cid)
          swapped = names.comma_swapped(value)
          if swapped:
            add_country(swapped, cid)
      add_country(record.alpha_3, cid)
    add_country(code, cid)
  for alias, code in names.COUNTRY_ALIASES.items():
    cid = gaz.country_index(code)
    if cid >= 0:
      country[alias] = cid  # aliases win over two-letter codes ("us", "uk")

  n_cities = np.bincount(gaz.admin1_id, minlength=gaz.num_admin1)
  admin1_keys = [names.normalize(n) for n in gaz.admin1_names.tolist()]
  admin1_order = np.argsort(-n_cities, kind="stable")
  admin1 = {k: v.tolist() for k, v in _group(admin1_keys, admin1_order).items()}
  loose_keys = [names.strip_words(k, names.ADMIN_WORDS) for k in admin1_keys]
  admin1_loose = {k: v.tolist() for k, v in _group(loose_keys, admin1_order).items()}

  # Same-named places rank by how dense their surroundings are relative to their country's average, so
  # Cairo (Egypt) beats Cairo (New York) although the US gazetteer is denser everywhere.
  country_mean = (np.bincount(gaz.country_id, weights=gaz.prominence, minlength=gaz.num_countries)
                  / np.maximum(np.bincount(gaz.country_id, minlength=gaz.num_countries), 1))
  rank = gaz.prominence / country_mean[gaz.country_id]
  row_order = np.argsort(-rank, kind="stable")
  city_keys = [names.normalize(n) for n in gaz.name.tolist()]
  city = _group(city_keys, row_order)
  city_loose = _group([names.strip_words(k, names.CITY_WORDS) for k in city_keys], row_order)
  return Lookups(
    country=country, admin1=admin1, admin1_loose=admin1_loose, city=city, city_loose=city_loose,
    country_of_admin1=gaz.admin1_country, country_of_row=gaz.country_id, admin1_of_row=gaz.admin1_id,
    best_row_of_admin1=_best_per_group(gaz.admin1_id, gaz.num_admin1, gaz.prominence),
    best_row_of_country=_best_per_group(gaz.country_id, gaz.num_countries, gaz.prominence),
    us_country=gaz.country_index("US"))


def _parts(text) -> list[str]:
  """The whole text, then its comma-separated parts ('Biei, Hokkaido' -> also 'Biei', 'Hokkaido')."""
  if not isinstance(text, str):
    return []
  text = text.strip()[:200]
  parts = [text]
  if "," in text:
    parts += [p for p in (s.strip() for s in text.split(",")) if p]
  return parts


def resolve_country(t: Lookups, text) -> int:
  for part in _parts(text)[:1] + _parts(text)[1:][::-1]:  # whole text, then the last part first
    for key in names.keys(part):
      for variant in names.name_variants(key):
        if variant in t.country:
          return t.country[variant]
  return -1


def resolve_admin1(t: Lookups, text, country: int = -1) -> int:
  for part in _parts(text):
    for key in names.keys(part):
      found = _resolve_admin1_key(t, key, country)
      if found >= 0:
        return found
  return -1


def _resolve_admin1_key(t: Lookups, key: str, country: int) -> int:
  if key:
    if country in (-1, t.us_country) and key in names.US_STATES and t.us_country >= 0:
      key_us = names.normalize(names.US_STATES[key])
      ids = [i for i in t.admin1.get(key_us, []) if t.country_of_admin1[i] == t.us_country]
      if ids:
        return ids[0]
    for table, k in ((t.admin1, key), (t.admin1_loose, names.strip_words(key, names.ADMIN_WORDS))):
      ids = table.get(k, [])
      if country >= 0:
        ids = [i for i in ids if t.country_of_admin1[i] == country]
      if ids:
        return int(ids[0])
  return -1


def _city_rows(t: Lookups, key: str) -> np.ndarray | None:
  alias = names.CITY_ALIASES.get(key)
  for k in ([alias] if alias else []) + [key]:
    if k in t.city:
      return t.city[k]
  loose = names.strip_words(key, names.CITY_WORDS)
  for table in (t.city, t.city_loose):
    if loose in table:
      return table[loose]
  return t.city_loose.get(key)


def resolve_city(t: Lookups, text, country: int = -1, admin1: int = -1) -> int:
  for part in _parts(text):
    for key in names.keys(part):
      rows = _city_rows(t, key)
      if rows is None:
        continue
      if admin1 >= 0:
        in_admin1 = rows[t.admin1_of_row[rows] == admin1]
        if len(in_admin1):
          return int(in_admin1[0])
      if country >= 0:
        rows = rows[t.country_of_row[rows] == country]
      if len(rows):
        return int(rows[0])
  return -1


def geocode(gaz, t: Lookups, city=None, admin1=None, country=None) -> tuple[float, float] | None:
  cid = resolve_country(t, country) if country else -1
  aid = resolve_admin1(t, admin1, cid) if admin1 else -1
  if cid < 0 and aid >= 0:
    cid = int(t.country_of_admin1[aid])
  row = resolve_city(t, city, cid, aid) if city else -1
  if row < 0 and aid >= 0:
    row = int(t.best_row_of_admin1[aid])
  if row < 0 and cid >= 0:
    row = int(t.best_row_of_country[cid])
  if row < 0:
    return None
  return float(gaz.lat[row]), float(gaz.lon[row])
