"""The synthetic shop's language: a category tree with the words shoppers and sellers use.

Titles use `nouns`; shoppers also type `query_synonyms`, which no title contains (the lexical
gap a BM25 engine cannot bridge: "couch" for a sofa). A few descriptions mention a synonym,
which is what domain-adaptive pretraining can pick up. `new_terms` only appear in queries once
the new-vocabulary drift is switched on. `complements` link leaves bought together (they drive
co-purchases and the "related" relevance grade).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Leaf:
    name: str
    nouns: tuple[str, ...]
    query_synonyms: tuple[str, ...]
    new_terms: tuple[str, ...]
    price: float
    attributes: tuple[str, ...]
    complements: tuple[str, ...] = ()


@dataclass(frozen=True)
class TopCategory:
    name: str
    brand_stem: str
    uses: tuple[str, ...]
    leaves: tuple[Leaf, ...]


def L(name, nouns, syn, new, price, attrs, comp=()):  # noqa: N802 - a compact table row
    return Leaf(name, tuple(nouns), tuple(syn), tuple(new), float(price), tuple(attrs), tuple(comp))


# The tables below read best one leaf per line.
# fmt: off
CMS = ("colour", "material", "size")
CM = ("colour", "material")
CS = ("colour", "size")

TAXONOMY: tuple[TopCategory, ...] = (
    TopCategory("Furniture", "hom", ("the living room", "small flats", "family homes"), (
        L("Sofas", ["sofa", "settee"], ["couch", "chesterfield"], ["cloud couch"], 650, CMS, ["Coffee Tables", "Cushions"]),
        L("Armchairs", ["armchair", "accent chair"], ["easy chair", "recliner"], ["lounge pod"], 280, CM, ["Floor Lamps"]),
        L("Coffee Tables", ["coffee table"], ["cocktail table"], ["sofa table"], 160, CM, ["Sofas", "Rugs"]),
        L("Bookcases", ["bookcase", "bookshelf"], ["shelving unit"], ["shelfie"], 140, CMS, ["Floor Lamps"]),
        L("Bed Frames", ["bed frame", "bedstead"], ["bed base"], ["platform bed"], 420, CMS, ["Duvets", "Pillows"]),
        L("Dining Chairs", ["dining chair"], ["kitchen chair"], ["bistro seat"], 90, CM, []),
    )),
    TopCategory("Kitchen", "kit", ("everyday cooking", "busy weeknights", "weekend baking"), (
        L("Frying Pans", ["frying pan", "skillet"], ["fry pan"], ["wok pan"], 45, CMS, ["Chef Knives"]),
        L("Saucepans", ["saucepan", "stockpot"], ["cooking pot"], ["one pot"], 55, CMS, ["Frying Pans"]),
        L("Chef Knives", ["chef knife", "kitchen knife"], ["cooks knife"], ["gyuto"], 70, CM, ["Chopping Boards"]),
        L("Blenders", ["blender"], ["smoothie maker", "liquidiser"], ["nutri blaster"], 85, CS, []),
        L("Kettles", ["kettle"], ["tea kettle", "water boiler"], ["smart kettle"], 40, CM, ["Coffee Makers"]),
        L("Coffee Makers", ["coffee maker", "espresso machine"], ["coffee machine", "barista"], ["pod brewer"], 180, CM, ["Kettles"]),
        L("Chopping Boards", ["chopping board"], ["cutting board"], ["prep slab"], 25, CS, ["Chef Knives"]),
    )),
    TopCategory("Electronics", "tek", ("commuting", "working from home", "gaming"), (
        L("Headphones", ["headphones", "earbuds"], ["earphones", "headset", "cans"], ["open ear buds"], 120, CM, ["Chargers"]),
        L("Speakers", ["bluetooth speaker", "wireless speaker"], ["boombox"], ["smart speaker"], 90, CM, []),
        L("Smartwatches", ["smartwatch"], ["fitness tracker", "smart watch"], ["health ring"], 220, CS, ["Chargers"]),
        L("Tablets", ["tablet"], ["ipad", "e-reader"], ["fold pad"], 350, CS, ["Chargers"]),
        L("Chargers", ["charger", "charging cable"], ["power adapter", "plug"], ["gan charger"], 25, CM, []),
        L("Keyboards", ["keyboard"], ["keypad"], ["split keeb"], 75, CM, []),
    )),
    TopCategory("Clothing", "wea", ("the office", "weekends", "travel"), (
        L("T-Shirts", ["t-shirt", "tee"], ["tshirt", "top"], ["boxy tee"], 20, CMS, ["Jeans"]),
        L("Jeans", ["jeans", "denim trousers"], ["denims", "pants"], ["baggy denim"], 60, CMS, ["T-Shirts"]),
        L("Hoodies", ["hoodie", "hooded sweatshirt"], ["jumper", "pullover"], ["oversized hoodie"], 45, CMS, []),
        L("Dresses", ["dress"], ["frock", "gown"], ["slip dress"], 70, CMS, []),
        L("Jackets", ["jacket", "coat"], ["anorak", "parka"], ["shacket"], 110, CMS, []),
        L("Socks", ["socks"], ["stockings"], ["crew socks"], 10, CMS, []),
    )),
    TopCategory("Shoes", "ste", ("running", "walking", "everyday wear"), (
        L("Running Shoes", ["running shoes", "trainers"], ["runners", "joggers"], ["super shoes"], 110, CS, ["Socks"]),
        L("Boots", ["boots", "ankle boots"], ["booties", "wellies"], ["hiker boots"], 130, CMS, []),
        L("Sandals", ["sandals"], ["flip flops", "sliders"], ["slides"], 40, CMS, []),
        L("Sneakers", ["sneakers", "canvas shoes"], ["kicks", "plimsolls"], ["dad shoes"], 80, CMS, ["Socks"]),
        L("Slippers", ["slippers"], ["house shoes"], ["mules"], 25, CS, []),
    )),
    TopCategory("Sports", "act", ("the gym", "camping trips", "yoga practice"), (
        L("Yoga Mats", ["yoga mat", "exercise mat"], ["pilates mat"], ["grip mat"], 35, CM, ["Dumbbells"]),
        L("Tents", ["tent", "camping tent"], ["shelter", "pop up tent"], ["glamping dome"], 200, CS, ["Backpacks"]),
        L("Backpacks", ["backpack", "rucksack"], ["daypack", "knapsack"], ["sling pack"], 75, CMS, ["Water Bottles"]),
        L("Helmets", ["bike helmet", "cycling helmet"], ["bicycle helmet"], ["mips lid"], 60, CS, []),
        L("Dumbbells", ["dumbbells", "hand weights"], ["free weights"], ["smart weights"], 50, CS, ["Yoga Mats"]),
        L("Water Bottles", ["water bottle", "drinks bottle"], ["flask", "canteen"], ["stanley cup"], 20, CMS, []),
    )),
    TopCategory("Home", "nes", ("the bedroom", "cosy evenings", "guest rooms"), (
        L("Duvets", ["duvet", "quilt"], ["comforter", "doona"], ["cooling duvet"], 90, CS, ["Pillows"]),
        L("Pillows", ["pillow"], ["cushion insert", "bed pillow"], ["cloud pillow"], 30, CS, ["Duvets"]),
        L("Rugs", ["rug", "area rug"], ["carpet", "mat"], ["washable rug"], 120, CMS, ["Coffee Tables"]),
        L("Curtains", ["curtains", "drapes"], ["blinds"], ["blackout panels"], 55, CMS, []),
        L("Floor Lamps", ["floor lamp", "standard lamp"], ["uplighter"], ["arc light"], 95, CM, ["Armchairs"]),
        L("Cushions", ["cushion", "throw pillow"], ["scatter cushion"], ["boucle cushion"], 25, CMS, ["Sofas"]),
    )),
    TopCategory("Beauty", "glo", ("morning routines", "sensitive skin", "gifting"), (
        L("Shampoo", ["shampoo"], ["hair wash"], ["scalp serum"], 12, ("size",), []),
        L("Moisturisers", ["moisturiser", "face cream"], ["moisturizer", "lotion"], ["skin barrier cream"], 25, ("size",), []),
        L("Lipsticks", ["lipstick"], ["lip colour", "lippy"], ["lip oil"], 18, ("colour",), []),
        L("Perfume", ["perfume", "eau de parfum"], ["fragrance", "scent"], ["body mist"], 65, ("size",), []),
        L("Hair Dryers", ["hair dryer"], ["blow dryer", "hairdryer"], ["air styler"], 70, ("colour",), []),
    )),
    TopCategory("Toys", "pla", ("toddlers", "family game night", "birthdays"), (
        L("Building Blocks", ["building blocks", "construction set"], ["lego", "bricks"], ["magnet tiles"], 40, ("colour", "size"), []),
        L("Puzzles", ["jigsaw puzzle"], ["puzzle", "jigsaw"], ["3d puzzle"], 18, ("size",), []),
        L("Dolls", ["doll", "fashion doll"], ["barbie", "figure"], ["plush doll"], 25, ("colour",), []),
        L("Board Games", ["board game"], ["family game", "tabletop game"], ["party game"], 30, ("size",), []),
        L("Toy Cars", ["toy car", "die-cast car"], ["matchbox car", "model car"], ["rc car"], 15, ("colour",), []),
    )),
    TopCategory("Garden", "ver", ("small gardens", "balconies", "summer barbecues"), (
        L("Lawn Mowers", ["lawn mower"], ["grass cutter", "lawnmower"], ["robot mower"], 240, ("colour",), []),
        L("Garden Hoses", ["garden hose", "hose pipe"], ["hosepipe"], ["expandable hose"], 35, ("colour", "size"), []),
        L("Plant Pots", ["plant pot", "planter"], ["flower pot"], ["self watering pot"], 20, CMS, []),
        L("Pruning Shears", ["pruning shears", "secateurs"], ["pruners", "clippers"], ["bypass snips"], 25, CM, []),
        L("BBQ Grills", ["bbq grill", "barbecue"], ["grill", "smoker"], ["pellet grill"], 180, CM, []),
    )),
)

# Appears only from the drift start when `drift.new_category` is on.
NEW_CATEGORY = TopCategory("Pets", "paw", ("puppies", "indoor cats", "long walks"), (
    L("Dog Beds", ["dog bed"], ["pet bed", "dog basket"], ["orthopedic dog bed"], 55, CS, ["Dog Leads"]),
    L("Dog Leads", ["dog lead", "dog leash"], ["leash"], ["hands free leash"], 20, CS, ["Dog Beds"]),
    L("Cat Trees", ["cat tree", "cat tower"], ["scratching post"], ["cat condo"], 80, CS, []),
    L("Pet Bowls", ["pet bowl", "dog bowl"], ["food dish"], ["slow feeder"], 15, CM, []),
    L("Cat Litter", ["cat litter"], ["kitty litter"], ["tofu litter"], 18, ("size",), []),
))

# Seasonal drift moves query traffic toward these top categories.
SEASONAL_TARGETS = ("Garden", "Sports")

COLOURS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("black", ("jet black", "onyx")),
    ("white", ("ivory", "snow white")),
    ("grey", ("gray", "charcoal", "slate")),
    ("blue", ("navy", "cobalt")),
    ("red", ("crimson", "burgundy")),
    ("green", ("sage", "olive")),
    ("beige", ("cream", "sand")),
    ("brown", ("walnut", "chocolate")),
    ("pink", ("blush", "rose")),
    ("yellow", ("mustard", "lemon")),
)
MATERIALS = (
    "leather", "velvet", "linen", "cotton", "wool", "oak", "walnut wood", "steel",
    "aluminium", "bamboo", "glass", "ceramic", "polyester", "recycled plastic", "cast iron",
)
SIZES = ("small", "medium", "large", "extra large", "compact", "family size")
ADJECTIVES = (
    "classic", "modern", "premium", "compact", "lightweight", "heavy duty", "eco", "vintage",
    "slim", "deluxe", "essential", "pro", "soft", "sturdy", "minimalist", "portable",
)
BRAND_SUFFIXES = ("a", "o", "ex", "ora", "ly", "ix", "ana", "eon", "ova", "um", "is", "ent")
BRAND_PREFIXES = ("nor", "vel", "lum", "kar", "sol", "bri", "tor", "mel", "zan", "fen", "qui", "dal")
DESCRIPTION_OPENERS = (
    "Designed for {use}, this {adj} {noun} is made from {material}.",
    "A {adj} {noun} in {colour} that fits right into {use}.",
    "Our {noun} combines {material} with a {adj} finish.",
    "Built to last: a {material} {noun} for {use}.",
)
DESCRIPTION_EXTRAS = (
    "Easy to clean and simple to assemble.",
    "Backed by a two-year warranty.",
    "Ships in recyclable packaging.",
    "Rated highly by customers for comfort and value.",
    "Available in several colours and sizes.",
    "Pairs well with the rest of the {brand} range.",
)
SYNONYM_SENTENCES = (
    "Some people call it a {synonym}.",
    "The perfect {synonym} for your home.",
    "Looking for a {synonym}? This is it.",
)
PII_TEMPLATES = (
    "{name}.{surname}@example.com",
    "{name}{n}@mail.test",
    "+44 7700 900{n3}",
    "call me 0161 496 0{n3}",
    "4111 1111 1111 1111",
)
FIRST_NAMES = ("john", "maria", "li", "sara", "ahmed", "olga", "tom", "aisha")
SURNAMES = ("smith", "garcia", "wang", "khan", "novak", "jones", "silva", "brown")
# fmt: on
