"""The embedded shop's product types: what the catalogue generator draws products from.

Each :class:`ProductType` plays the role of one of WebShop's scrape queries: products of a type
share WebShop's ``query`` and ``product_category`` (the fields its type reward compares), draw
their attributes from the type's attribute pool and their buying options (size, color, flavor,
...) from its option pools.

The pools are chosen so that the reward's fuzzy matching (:mod:`leafe.envs.shop_reward`) never
confuses two values of one pool: no two option values match each other after WebShop's colour
normalisation (``large`` vs ``x-large`` would: sizes are ``xs ... xxl`` here), and no attribute
is a substring of another one or of a title word. ``tests/envs/test_shop_catalog.py`` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProductType:
    """One kind of product.

    Attributes:
        query: the type's search phrase (WebShop's ``query``), e.g. ``"men's t-shirts"``.
        category: the department (WebShop's ``category``), e.g. ``"clothing"``.
        path: the category path (WebShop's ``product_category``), ``" › "``-joined.
        phrase: how titles and instructions name one such product, e.g. ``"men's t-shirt"``.
        nouns: the nouns of ``phrase`` (WebShop tags them with spaCy; here they are known).
        attributes: the attribute pool; a product has 3 or 4 of them.
        options: option name -> value pool; a product offers 2 to 5 values of each.
        price: (low, high) of the product prices in dollars.
    """

    query: str
    category: str
    path: str
    phrase: str
    nouns: tuple[str, ...]
    attributes: tuple[str, ...]
    options: tuple[tuple[str, tuple[str, ...]], ...]
    price: tuple[float, float]


SIZES = ("xs", "small", "medium", "large", "xl", "xxl")
COLORS = ("black", "white", "navy", "red", "gray", "green", "blue", "pink", "beige", "olive", "purple", "yellow")
SHOE_SIZES = ("6", "7", "8", "9", "10", "11", "12")
BED_SIZES = ("twin", "full", "queen", "king")

BRANDS: dict[str, tuple[str, ...]] = {
    "clothing": ("Northwind", "Kestrel", "Bluefin", "Oakridge", "Marlow", "Sunvale", "Tidewater", "Larkspur", "Fenwick", "Ashby"),
    "shoes": ("Strider", "Peakline", "Corvid", "Trailhaven", "Everstep", "Quillon", "Roamer", "Halden"),
    "home": ("Hearthly", "Linnet", "Cozyden", "Brambleton", "Wrenfield", "Dovecote", "Mossgrove", "Calloway"),
    "beauty": ("Lumiere", "Velora", "Purelle", "Azalia", "Serenna", "Glowen", "Mirabel", "Aveline"),
    "electronics": ("Voltix", "Sonara", "Nexbeam", "Quantra", "Zephyrion", "Ampero", "Cirrus", "Helix"),
    "grocery": ("Farmstead", "Goldfield", "Harvesta", "Orchardine", "Millbrook", "Sprigg", "Cedarvale", "Honeyhill"),
}

PRODUCT_TYPES: tuple[ProductType, ...] = (
    ProductType(
        "men's t-shirts", "clothing", "Clothing › Men › Shirts › T-Shirts", "men's t-shirt", ("men", "t", "shirt"),
        ("cotton", "machine wash", "short sleeve", "crew neck", "slim fit", "moisture wicking", "tagless"),
        (("size", SIZES), ("color", COLORS)), (8.0, 35.0),
    ),
    ProductType(
        "women's hoodies", "clothing", "Clothing › Women › Sweatshirts › Hoodies", "women's hoodie", ("women", "hoodie"),
        ("fleece lined", "machine wash", "kangaroo pocket", "drawstring", "relaxed fit", "polyester"),
        (("size", SIZES), ("color", COLORS)), (18.0, 60.0),
    ),
    ProductType(
        "men's jeans", "clothing", "Clothing › Men › Pants › Jeans", "men's jeans", ("men", "jeans"),
        ("stretch denim", "straight leg", "button fly", "machine wash", "regular fit", "five pocket"),
        (("size", ("w30", "w32", "w34", "w36", "w38")), ("color", ("black", "blue", "gray", "navy", "beige"))), (22.0, 70.0),
    ),
    ProductType(
        "women's dresses", "clothing", "Clothing › Women › Dresses", "women's dress", ("women", "dress"),
        ("floral print", "v neck", "hand wash", "midi length", "elastic waist", "chiffon", "sleeveless"),
        (("size", SIZES), ("color", COLORS)), (20.0, 80.0),
    ),
    ProductType(
        "wool socks", "clothing", "Clothing › Accessories › Socks", "wool socks", ("wool", "socks"),
        ("merino", "cushioned sole", "breathable", "arch support", "odor resistant"),
        (("size", ("small", "medium", "large")), ("color", ("black", "gray", "navy", "beige", "green"))), (9.0, 30.0),
    ),
    ProductType(
        "running shoes", "shoes", "Shoes › Athletic › Running Shoes", "running shoes", ("running", "shoes"),
        ("lightweight", "non slip", "mesh upper", "memory foam", "rubber sole", "arch support"),
        (("size", SHOE_SIZES), ("color", ("black", "white", "gray", "blue", "red", "pink"))), (35.0, 120.0),
    ),
    ProductType(
        "hiking boots", "shoes", "Shoes › Outdoor › Hiking Boots", "hiking boots", ("hiking", "boots"),
        ("waterproof", "leather", "ankle support", "rubber sole", "lace up", "insulated"),
        (("size", SHOE_SIZES), ("color", ("black", "brown", "olive", "gray"))), (45.0, 160.0),
    ),
    ProductType(
        "slippers", "shoes", "Shoes › Home › Slippers", "house slippers", ("house", "slippers"),
        ("memory foam", "faux fur", "non slip", "machine washable", "open toe"),
        (("size", ("small", "medium", "large", "xl")), ("color", ("gray", "pink", "beige", "black", "navy"))), (10.0, 40.0),
    ),
    ProductType(
        "bed sheets", "home", "Home & Kitchen › Bedding › Sheets", "bed sheet set", ("bed", "sheet", "set"),
        ("deep pocket", "wrinkle free", "egyptian cotton", "hypoallergenic", "machine washable", "bamboo"),
        (("size", BED_SIZES), ("color", ("white", "gray", "navy", "beige", "green", "pink"))), (25.0, 110.0),
    ),
    ProductType(
        "throw pillow covers", "home", "Home & Kitchen › Decor › Pillow Covers", "throw pillow cover", ("pillow", "cover"),
        ("velvet", "hidden zipper", "linen", "farmhouse", "double sided"),
        (("size", ("18x18", "20x20", "22x22", "12x20")), ("color", COLORS)), (8.0, 35.0),
    ),
    ProductType(
        "bath towels", "home", "Home & Kitchen › Bath › Towels", "bath towel set", ("bath", "towel", "set"),
        ("quick dry", "highly absorbent", "turkish cotton", "machine washable", "lightweight"),
        (("color", ("white", "gray", "navy", "beige", "blue", "green")),), (15.0, 60.0),
    ),
    ProductType(
        "blackout curtains", "home", "Home & Kitchen › Window › Curtains", "blackout curtains", ("blackout", "curtains"),
        ("thermal insulated", "noise reducing", "grommet top", "energy saving", "machine washable"),
        (("size", ("52x63", "52x84", "52x96")), ("color", ("black", "gray", "navy", "beige", "white", "green"))), (18.0, 70.0),
    ),
    ProductType(
        "coffee mugs", "home", "Home & Kitchen › Kitchen › Mugs", "coffee mug", ("coffee", "mug"),
        ("ceramic", "dishwasher safe", "microwave safe", "large handle", "lead free"),
        (("color", ("white", "black", "blue", "green", "pink", "gray")),), (8.0, 30.0),
    ),
    ProductType(
        "shampoo", "beauty", "Beauty › Hair Care › Shampoo", "shampoo", ("shampoo",),
        ("sulfate free", "paraben free", "for dry hair", "cruelty free", "argan oil", "natural ingredients"),
        (("scent", ("lavender", "coconut", "citrus", "unscented", "mint")), ("size", ("8oz", "12oz", "16oz"))), (6.0, 30.0),
    ),
    ProductType(
        "face moisturizer", "beauty", "Beauty › Skin Care › Moisturizers", "face moisturizer", ("face", "moisturizer"),
        ("hyaluronic acid", "oil free", "for sensitive skin", "fragrance free", "spf 30", "vitamin c"),
        (("size", ("1.7oz", "3.4oz")),), (10.0, 55.0),
    ),
    ProductType(
        "lipstick", "beauty", "Beauty › Makeup › Lips › Lipstick", "lipstick", ("lipstick",),
        ("long lasting", "matte finish", "cruelty free", "vegan", "moisturizing", "waterproof"),
        (("color", ("red", "pink", "nude", "coral", "plum", "mauve")),), (6.0, 28.0),
    ),
    ProductType(
        "nail polish", "beauty", "Beauty › Makeup › Nails › Nail Polish", "nail polish", ("nail", "polish"),
        ("quick dry", "chip resistant", "non toxic", "gel finish", "vegan"),
        (("color", ("red", "pink", "nude", "coral", "purple", "black", "white")),), (5.0, 20.0),
    ),
    ProductType(
        "wireless earbuds", "electronics", "Electronics › Audio › Headphones › Earbuds", "wireless earbuds", ("earbuds",),
        ("noise cancelling", "bluetooth 5.3", "water resistant", "charging case", "built in microphone", "long battery life"),
        (("color", ("black", "white", "blue", "pink")),), (18.0, 150.0),
    ),
    ProductType(
        "phone cases", "electronics", "Electronics › Phones › Accessories › Cases", "phone case", ("phone", "case"),
        ("shockproof", "slim", "magsafe compatible", "clear back", "screen protector included", "kickstand"),
        (("model", ("iphone", "galaxy", "pixel")), ("color", ("black", "clear", "blue", "pink", "green", "purple"))), (7.0, 40.0),
    ),
    ProductType(
        "usb chargers", "electronics", "Electronics › Power › Chargers", "usb charger", ("usb", "charger"),
        ("fast charging", "dual port", "foldable plug", "overheat protection", "type c port", "compact"),
        (("color", ("black", "white")), ("power", ("20w", "35w", "65w"))), (9.0, 45.0),
    ),
    ProductType(
        "bluetooth speakers", "electronics", "Electronics › Audio › Speakers", "bluetooth speaker", ("bluetooth", "speaker"),
        ("waterproof", "portable", "deep bass", "stereo pairing", "long battery life", "built in microphone"),
        (("color", ("black", "blue", "red", "gray", "green")),), (20.0, 130.0),
    ),
    ProductType(
        "ground coffee", "grocery", "Grocery › Beverages › Coffee", "ground coffee", ("coffee",),
        ("organic", "fair trade", "whole bean", "low acid", "single origin", "kosher"),
        (("roast", ("light", "medium", "dark", "espresso")), ("size", ("12oz", "2lb", "5lb"))), (7.0, 45.0),
    ),
    ProductType(
        "green tea", "grocery", "Grocery › Beverages › Tea", "green tea", ("tea",),
        ("organic", "decaf", "loose leaf", "non gmo", "caffeine free"),
        (("flavor", ("original", "jasmine", "lemon", "mint", "ginger")), ("size", ("20 bags", "48 bags", "100 bags"))), (4.0, 30.0),
    ),
    ProductType(
        "protein bars", "grocery", "Grocery › Snacks › Protein Bars", "protein bars", ("protein", "bars"),
        ("gluten free", "low sugar", "high protein", "keto friendly", "plant based", "soy free"),
        (("flavor", ("chocolate", "peanut butter", "vanilla", "cookie dough", "berry")), ("pack", ("6 bars", "12 bars", "30 bars"))), (8.0, 45.0),
    ),
    ProductType(
        "trail mix", "grocery", "Grocery › Snacks › Nuts & Trail Mix", "trail mix", ("trail", "mix"),
        ("no added sugar", "roasted", "individually wrapped", "resealable bag", "vegan"),
        (("flavor", ("classic", "tropical", "dark chocolate", "sweet and salty")), ("size", ("1lb", "2lb", "3lb"))), (6.0, 35.0),
    ),
)
