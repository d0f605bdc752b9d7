"""Product titles and descriptions with the variety of a real marketplace.

Sellers write the same attributes in different orders, drop fields, use colour variants
("charcoal" for grey) and only sometimes mention the word a shopper would type. Each product's
text comes from its own seeded stream, so a product's text never depends on the others.
"""

from __future__ import annotations

import random
import re
from typing import Any, Protocol

import numpy as np

from shopflow.data.synthetic import vocabulary as voc


class Catalogue(Protocol):
    """What `describe_products` reads of the world (`world.ShopWorld`): the product columns,
    the leaf and top categories and the brand names."""

    n: int
    p: dict[str, np.ndarray]
    leaves: list[Any]
    tops: list[Any]
    brand_names: np.ndarray


# A [bracketed] segment disappears with the optional field inside it.
TITLE_TEMPLATES = (
    "{brand}[ {adj}][ {colour}][ {material}] {noun}",
    "{noun}[ in {colour}] - {brand}",
    "{brand} {noun}[, {material}][, {colour}][, {size}]",
    "[{adj} ]{noun} by {brand}[ ({colour})]",
    "{brand} {model} {noun}[ {size}]",
    "[{colour} ]{noun}[ {material}] | {brand}",
)
SEGMENT = re.compile(r"\[([^\]]*)\]")


def _title(rnd: random.Random, fields: dict[str, str]) -> str:
    template = rnd.choice(TITLE_TEMPLATES)
    for optional in ("adj", "material", "size", "colour"):
        if fields[optional] and rnd.random() < 0.2:
            fields = {**fields, optional: ""}

    def keep_if_filled(match: re.Match[str]) -> str:
        segment = match.group(1)
        names = re.findall(r"{(\w+)}", segment)
        return segment.format(**fields) if all(fields[n] for n in names) else ""

    return " ".join(SEGMENT.sub(keep_if_filled, template).format(**fields).split())


def describe_products(world: Catalogue) -> tuple[list[str], list[str], list[str]]:
    titles: list[str] = []
    descriptions: list[str] = []
    colour_words: list[str] = []
    p = world.p
    for i in range(world.n):
        rnd = random.Random(int(p["text_seed"][i]))
        info = world.leaves[p["leaf"][i]]
        leaf = info.leaf
        top = world.tops[info.top]
        colour = ""
        if p["colour"][i] >= 0:
            base, variants = voc.COLOURS[p["colour"][i]]
            colour = base if rnd.random() < 0.6 else rnd.choice(variants)
        fields = {
            "brand": str(world.brand_names[p["brand"][i]]),
            "adj": rnd.choice(voc.ADJECTIVES),
            "colour": colour,
            "material": voc.MATERIALS[p["material"][i]] if p["material"][i] >= 0 else "",
            "size": voc.SIZES[p["size"][i]] if p["size"][i] >= 0 else "",
            "noun": rnd.choice(leaf.nouns),
            "model": f"{rnd.choice('ABCDEFGHKMXZ')}{rnd.randint(10, 990)}",
        }
        titles.append(_title(rnd, fields))
        sentences = [
            rnd.choice(voc.DESCRIPTION_OPENERS).format(
                use=rnd.choice(top.uses),
                adj=fields["adj"],
                noun=rnd.choice(leaf.nouns),
                material=fields["material"] or "quality materials",
                colour=colour or "a neutral tone",
            )
        ]
        for extra in rnd.sample(voc.DESCRIPTION_EXTRAS, rnd.randint(0, 2)):
            sentences.append(extra.format(brand=fields["brand"]))
        if leaf.query_synonyms and rnd.random() < 0.15:
            synonym = rnd.choice(leaf.query_synonyms)
            sentences.append(rnd.choice(voc.SYNONYM_SENTENCES).format(synonym=synonym))
        descriptions.append(" ".join(sentences) if rnd.random() > 0.05 else "")
        colour_words.append(colour)
    return titles, descriptions, colour_words
