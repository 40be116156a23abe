"""Sentences carrying personal data (``data.dataset=personal``): the case where recovering a
few tokens *is* the leak.

Generated from templates with a fixed seed (the same 2,000 sentences everywhere, whatever the
global RNG), e.g. "My name is Maria Lopez and I was born on 12 March 1987 in Porto."; the label
is the template, and ``critical[i]`` lists the filled-in private strings (exact substrings).
Names, places and numbers are invented; none is a real person's.
"""

from __future__ import annotations

import random

from gradleak.config import DataConfig
from gradleak.data import register_dataset
from gradleak.data.text import TextDataset, split_texts

FIRST = ("Maria", "James", "Aisha", "Chen", "Olga", "Pedro", "Fatima", "Lukas", "Yuki", "Omar",
         "Sofia", "David", "Amara", "Ivan", "Leila", "Tomas", "Priya", "Noah", "Elena", "Kwame",
         "Hana", "Mateo", "Zara", "Felix", "Ines", "Ravi", "Greta", "Samir", "Nora", "Diego")
LAST = ("Lopez", "Smith", "Khan", "Wang", "Petrova", "Silva", "Haddad", "Becker", "Tanaka",
        "Farah", "Rossi", "Cohen", "Okafor", "Novak", "Karimi", "Horvat", "Sharma", "Miller",
        "Popescu", "Mensah", "Kim", "Garcia", "Ali", "Jensen", "Costa", "Patel", "Berg", "Nasser",
        "Dubois", "Moreno")
CITIES = ("Porto", "Leeds", "Lagos", "Osaka", "Graz", "Lyon", "Quito", "Pune", "Turku", "Cork",
          "Busan", "Malmo", "Accra", "Split", "Bergen", "Tunis", "Perth", "Dresden", "Cusco", "Riga")
STREETS = ("Oak Street", "Mill Road", "Harbour Lane", "Station Road", "Elm Avenue", "King Street",
           "Park Lane", "Bridge Road")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SIZE = 2000
SEED = 20240707


def _values(r: random.Random) -> dict[str, str]:
    return {"first": r.choice(FIRST), "last": r.choice(LAST), "city": r.choice(CITIES),
            "street": r.choice(STREETS), "day": r.choice(DAYS),
            "date": f"{r.randint(1, 28)} {r.choice(MONTHS)} {r.randint(1940, 2005)}",
            "phone": f"{r.randint(200, 999)} {r.randint(100, 999)} {r.randint(1000, 9999)}",
            "number": str(r.randint(10_000_000, 99_999_999)), "age": str(r.randint(18, 95)),
            "no": str(r.randint(1, 250))}


# (class name, template, the keys whose values are private)
TEMPLATES = (
    ("birth", "My name is {first} {last} and I was born on {date} in {city}.",
     ("first", "last", "date", "city")),
    ("phone", "Call {first} at {phone} before {day}.", ("first", "phone")),
    ("account", "{first} {last}'s account number is {number}.", ("first", "last", "number")),
    ("patient", "The patient {first} {last}, age {age}, lives at {no} {street}.",
     ("first", "last", "age", "no", "street")),
    ("address", "Please send the parcel to {first} {last}, {no} {street}, {city}.",
     ("first", "last", "no", "street", "city")),
    ("meeting", "I will meet {first} in {city} on {day} at {no} {street}.",
     ("first", "city", "no", "street")),
    ("salary", "{first} {last} earns {number} a year and lives in {city}.",
     ("first", "last", "number", "city")),
    ("doctor", "Dr. {last} saw {first} on {date} about the results.", ("last", "first", "date")),
    ("password", "The password of {first} is {number}, do not share it.", ("first", "number")),
    ("travel", "{first} {last} flies from {city} on {date}.", ("first", "last", "city", "date")),
    ("contact", "You can reach {first} {last} on {phone} any {day}.",
     ("first", "last", "phone")),
    ("school", "{first} is {age} years old and goes to school in {city}.",
     ("first", "age", "city")),
)


def personal_corpus() -> tuple[list[str], list[int], list[list[str]]]:
    """The :data:`SIZE` sentences, their template labels and private strings (deterministic)."""
    r = random.Random(SEED)
    texts, labels, critical = [], [], []
    for i in range(SIZE):
        label = i % len(TEMPLATES)
        _, template, private = TEMPLATES[label]
        v = _values(r)
        texts.append(template.format(**v))
        labels.append(label)
        critical.append(list(dict.fromkeys(v[k] for k in private)))
    return texts, labels, critical


@register_dataset("personal")
def personal(cfg: DataConfig) -> TextDataset:
    """Template sentences with names, numbers, dates and places (text; critical tokens)."""
    texts, labels, critical = personal_corpus()
    parts = split_texts(texts, labels, critical, split=cfg.split, holdout=cfg.holdout)
    return TextDataset("personal", parts["texts"], parts["labels"],
                       tuple(name for name, _, _ in TEMPLATES), critical=parts["critical"],
                       split_note=parts["split_note"],
                       transform_note=f"{SIZE} template sentences, seed {SEED}")
