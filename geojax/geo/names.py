"""Text normalization and the alias tables that map free-text place names to gazetteer keys."""
from __future__ import annotations

import re
import unicodedata

_NON_ALNUM = re.compile(r"[^0-9a-z]+")

# Display names (ASCII) where pycountry's is official-sounding or missing; also the codes pycountry lacks.
COUNTRY_DISPLAY = {
  "US": "United States", "GB": "United Kingdom", "RU": "Russia", "KR": "South Korea", "KP": "North Korea",
  "IR": "Iran", "SY": "Syria", "VN": "Vietnam", "LA": "Laos", "BO": "Bolivia", "VE": "Venezuela",
  "TZ": "Tanzania", "MD": "Moldova", "TW": "Taiwan", "CZ": "Czechia", "MK": "North Macedonia",
  "CD": "Democratic Republic of the Congo", "CG": "Republic of the Congo", "FM": "Micronesia",
  "PS": "Palestine", "VA": "Vatican City", "BN": "Brunei", "CI": "Ivory Coast", "XK": "Kosovo",
  "AN": "Netherlands Antilles", "TR": "Turkey", "SZ": "Eswatini", "CV": "Cape Verde", "TL": "East Timor",
  "BQ": "Caribbean Netherlands", "MF": "Saint Martin", "SX": "Sint Maarten", "VG": "British Virgin Islands",
  "VI": "U.S. Virgin Islands", "KN": "Saint Kitts and Nevis", "BL": "Saint Barthelemy", "MO": "Macau",
  "HK": "Hong Kong", "CN": "China", "BS": "Bahamas", "GM": "Gambia", "NL": "Netherlands",
  "PH": "Philippines", "AE": "United Arab Emirates", "SH": "Saint Helena", "FK": "Falkland Islands",
}

# Extra spellings people and models write (normalized form -> ISO alpha-2).
COUNTRY_ALIASES = {
  "usa": "US", "u s a": "US", "us": "US", "u s": "US", "united states of america": "US", "america": "US",
  "united states": "US", "the united states": "US", "the us": "US", "the usa": "US",
  "uk": "GB", "u k": "GB", "great britain": "GB", "britain": "GB", "england": "GB", "scotland": "GB",
  "wales": "GB", "northern ireland": "GB", "united kingdom of great britain and northern ireland": "GB",
  "czech republic": "CZ", "czechia": "CZ", "holland": "NL", "the netherlands": "NL", "netherlands": "NL",
  "south korea": "KR", "korea": "KR", "republic of korea": "KR", "korea south": "KR",
  "north korea": "KP", "dprk": "KP", "russia": "RU", "russian federation": "RU",
  "ivory coast": "CI", "cote d ivoire": "CI", "cote divoire": "CI", "iran": "IR", "syria": "SY",
  "vietnam": "VN", "viet nam": "VN", "laos": "LA", "bolivia": "BO", "venezuela": "VE", "tanzania": "TZ",
  "moldova": "MD", "taiwan": "TW", "republic of china": "TW", "macedonia": "MK", "north macedonia": "MK",
  "burma": "MM", "myanmar": "MM", "swaziland": "SZ", "eswatini": "SZ", "cape verde": "CV", "cabo verde": "CV",
  "east timor": "TL", "timor leste": "TL", "vatican": "VA", "vatican city": "VA", "holy see": "VA",
  "palestine": "PS", "drc": "CD", "dr congo": "CD", "congo kinshasa": "CD",
  "democratic republic of the congo": "CD", "democratic republic of congo": "CD",
  "republic of the congo": "CG", "congo brazzaville": "CG", "congo": "CG", "uae": "AE", "emirates": "AE",
  "turkey": "TR", "turkiye": "TR", "kosovo": "XK", "brunei": "BN", "micronesia": "FM",
  "prc": "CN", "mainland china": "CN", "peoples republic of china": "CN", "hong kong": "HK", "macau": "MO",
  "macao": "MO", "the bahamas": "BS", "bahamas": "BS", "the gambia": "GM", "gambia": "GM",
  "the philippines": "PH", "deutschland": "DE", "espana": "ES", "italia": "IT", "nippon": "JP",
  "brasil": "BR", "mexico": "MX", "sri lanka": "LK", "ceylon": "LK", "persia": "IR", "siam": "TH",
  "netherlands antilles": "AN", "bosnia": "BA", "bosnia herzegovina": "BA", "trinidad": "TT",
  "saint martin": "MF", "sint maarten": "SX", "falklands": "FK", "reunion": "RE", "curacao": "CW",
}

# Words that decorate names but are not part of GeoNames' ascii names.
ADMIN_WORDS = {
  "state", "province", "prefecture", "region", "oblast", "county", "district", "governorate", "department",
  "departement", "territory", "krai", "kray", "republic", "autonomous", "community", "voivodeship", "canton",
  "municipality", "of", "the", "to", "do", "fu", "ken", "prov", "pref",
}
CITY_WORDS = {"city", "town", "village", "municipality", "of", "the", "shi", "si", "gun", "borough", "township",
              "metropolitan", "area", "downtown", "centre", "center", "old"}

# US state and Canadian province postal codes, which answers often use ("CA", "NY").
US_STATES = {
  "al": "Alabama", "ak": "Alaska", "az": "Arizona", "ar": "Arkansas", "ca": "California", "co": "Colorado",
  "ct": "Connecticut", "de": "Delaware", "fl": "Florida", "ga": "Georgia", "hi": "Hawaii", "id": "Idaho",
  "il": "Illinois", "in": "Indiana", "ia": "Iowa", "ks": "Kansas", "ky": "Kentucky", "la": "Louisiana",
  "me": "Maine", "md": "Maryland", "ma": "Massachusetts", "mi": "Michigan", "mn": "Minnesota",
  "ms": "Mississippi", "mo": "Missouri", "mt": "Montana", "ne": "Nebraska", "nv": "Nevada",
  "nh": "New Hampshire", "nj": "New Jersey", "nm": "New Mexico", "ny": "New York", "nc": "North Carolina",
  "nd": "North Dakota", "oh": "Ohio", "ok": "Oklahoma", "or": "Oregon", "pa": "Pennsylvania",
  "ri": "Rhode Island", "sc": "South Carolina", "sd": "South Dakota", "tn": "Tennessee", "tx": "Texas",
  "ut": "Utah", "vt": "Vermont", "va": "Virginia", "wa": "Washington", "wv": "West Virginia",
  "wi": "Wisconsin", "wy": "Wyoming", "dc": "Washington, D.C.",
}

CITY_ALIASES = {
  "nyc": "new york city", "new york": "new york city", "la": "los angeles", "sf": "san francisco",
  "rio": "rio de janeiro", "saigon": "ho chi minh city", "bombay": "mumbai", "calcutta": "kolkata",
  "madras": "chennai", "peking": "beijing", "canton": "guangzhou", "kiev": "kyiv", "kyiv": "kiev",
  "washington dc": "washington d c", "washington d c": "washington", "st petersburg": "saint petersburg",
  "koln": "cologne", "munchen": "munich", "wien": "vienna", "roma": "rome", "praha": "prague",
  "lisboa": "lisbon", "firenze": "florence", "venezia": "venice", "napoli": "naples", "milano": "milan",
}


def fold(text: str) -> str:
  """Accent-free ASCII of `text` (keeps punctuation)."""
  decomposed = unicodedata.normalize("NFKD", text)
  return "".join(c for c in decomposed if not unicodedata.combining(c)).encode("ascii", "ignore").decode()


def normalize(text) -> str:
  """Lower-case ASCII words separated by single spaces: 'Côte d’Ivoire ' -> 'cote d ivoire'."""
  if not isinstance(text, str):
    return ""
  text = fold(text).lower().replace("&", " and ")
  text = re.sub(r"\bst\b\.?", "saint", text)
  text = re.sub(r"\bste\b\.?", "sainte", text)
  text = text.replace("'", "").replace("`", "")
  return _NON_ALNUM.sub(" ", text).strip()


_GERMAN = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss"})


def keys(text) -> list[str]:
  """Normalized lookup keys of a name: plain accent folding, then GeoNames' German-style transliteration
  ('Malmö' -> 'malmo', 'malmoe')."""
  first = normalize(text)
  if not isinstance(text, str):
    return [first]
  second = normalize(text.translate(_GERMAN))
  return [first, second] if second != first else [first]


def strip_words(normalized: str, words: set[str]) -> str:
  """Drops decorating words ('biei town' -> 'biei'); returns the input when nothing would be left."""
  kept = [w for w in normalized.split() if w not in words]
  return " ".join(kept) if kept else normalized


def name_variants(normalized: str) -> list[str]:
  """'korea republic of' -> also 'republic of korea' (pycountry's comma forms, once normalized)."""
  out = [normalized]
  if normalized.startswith("the "):
    out.append(normalized[4:])
  return out


def comma_swapped(name: str) -> str | None:
  """'Korea, Republic of' -> 'Republic of Korea'."""
  if "," not in name:
    return None
  head, tail = name.split(",", 1)
  return f"{tail.strip()} {head.strip()}"
