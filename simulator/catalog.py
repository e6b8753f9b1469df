"""The synthetic shop's catalog data: categories with their word lists, brands, prices and
complements, and the catalog frame built from them (``simulator.shop`` draws the rest)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Category:
    name: str
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    brands: tuple[str, ...]
    median_price: float
    complements: tuple[str, ...]


CATEGORIES: tuple[Category, ...] = (
    Category("Electronics", ("Headphones", "Speaker", "Smartwatch", "Tablet", "Keyboard", "Webcam", "Earbuds"),
             ("Wireless", "Compact", "Pro", "Smart", "Ultra", "Noise-Cancelling"),
             ("Voltix", "Sonara", "Pixelon", "Nexa", "Auralis", "Quantra"), 90.0, ("Phone Accessories",)),
    Category("Phone Accessories", ("Phone Case", "Screen Protector", "Charger", "USB-C Cable", "Power Bank", "Car Mount"),
             ("Slim", "Rugged", "Fast", "Magnetic", "Clear", "Braided"),
             ("Grip", "Charja", "Shieldo", "Cablo", "Mountix", "Ampere"), 18.0, ("Electronics",)),
    Category("Kitchen", ("Chef Knife", "Frying Pan", "Cutting Board", "Blender", "Mixing Bowl", "Toaster"),
             ("Stainless", "Non-Stick", "Classic", "Heavy-Duty", "Ceramic", "Bamboo"),
             ("Cucina", "Forge", "Panware", "Oakline", "Blendo", "Saveur"), 35.0, ("Coffee & Tea", "Home")),
    Category("Coffee & Tea", ("Espresso Maker", "Coffee Grinder", "Kettle", "French Press", "Tea Infuser", "Coffee Mug"),
             ("Barista", "Electric", "Glass", "Insulated", "Manual", "Gooseneck"),
             ("Crema", "Brewster", "Leafwell", "Roastly", "Morning", "Steamo"), 40.0, ("Kitchen",)),
    Category("Beauty", ("Face Serum", "Lipstick", "Mascara", "Moisturizer", "Eyeshadow Palette", "Foundation"),
             ("Hydrating", "Matte", "Radiant", "Vegan", "Long-Lasting", "Gentle"),
             ("Lumiere", "Velvet", "Glowa", "Puria", "Bloom", "Sheen"), 22.0, ("Personal Care",)),
    Category("Personal Care", ("Shampoo", "Body Wash", "Toothbrush", "Razor", "Deodorant", "Hair Dryer"),
             ("Fresh", "Sensitive", "Electric", "Natural", "Daily", "Herbal"),
             ("Purely", "Aqualis", "Brisk", "Dermo", "Kindred", "Vita"), 12.0, ("Beauty",)),
    Category("Sports", ("Yoga Mat", "Dumbbell Set", "Running Belt", "Jump Rope", "Resistance Band", "Water Bottle"),
             ("Lightweight", "Adjustable", "Pro", "Grip", "Foldable", "Durable"),
             ("Strivo", "Pulse", "Kinetic", "Apex", "Endura", "Flexa"), 30.0, ("Outdoor", "Apparel")),
    Category("Outdoor", ("Tent", "Sleeping Bag", "Backpack", "Headlamp", "Camping Stove", "Trekking Poles"),
             ("Waterproof", "Ultralight", "Rugged", "Insulated", "Compact", "Trail"),
             ("Ridgeway", "Summit", "Northbound", "Timberline", "Basecamp", "Wildr"), 70.0, ("Sports",)),
    Category("Apparel", ("T-Shirt", "Hoodie", "Jeans", "Jacket", "Leggings", "Socks"),
             ("Organic", "Slim-Fit", "Oversized", "Classic", "Stretch", "Vintage"),
             ("Threadly", "Urbane", "Cotton & Co", "Northwear", "Looma", "Stitch"), 35.0, ("Shoes",)),
    Category("Shoes", ("Sneakers", "Running Shoes", "Boots", "Sandals", "Loafers", "Slippers"),
             ("Cushioned", "Leather", "Breathable", "Waterproof", "Lightweight", "Everyday"),
             ("Stride", "Solemate", "Pacer", "Treadwell", "Kickr", "Footloft"), 75.0, ("Apparel", "Sports")),
    Category("Toys", ("Building Blocks", "Puzzle", "Plush Bear", "Toy Car", "Board Game", "Kite"),
             ("Colorful", "Wooden", "Educational", "Classic", "Giant", "Mini"),
             ("Playful", "Tinker", "Wonderbox", "Jolly", "Brickly", "Kidoo"), 20.0, ("Books",)),
    Category("Books", ("Cookbook", "Mystery Novel", "Travel Guide", "Picture Book", "Notebook", "Sketchbook"),
             ("Illustrated", "Bestselling", "Pocket", "Hardcover", "Collected", "Annotated"),
             ("Pagewise", "Inkwell", "Folio", "Chapter", "Quill", "Bookend"), 15.0, ("Toys", "Coffee & Tea")),
    Category("Home", ("Throw Blanket", "Table Lamp", "Scented Candle", "Wall Clock", "Storage Basket", "Cushion"),
             ("Cozy", "Minimalist", "Rustic", "Modern", "Handmade", "Nordic"),
             ("Hearth", "Nestle", "Lumen", "Oak & Ash", "Dwell", "Havn"), 30.0, ("Kitchen", "Pet Supplies")),
    Category("Pet Supplies", ("Dog Bed", "Cat Tree", "Leash", "Pet Bowl", "Chew Toy", "Grooming Brush"),
             ("Durable", "Orthopedic", "Reflective", "Washable", "Interactive", "Soft"),
             ("Pawsome", "Furrly", "Barkley", "Whisker", "Petlove", "Tailwind"), 25.0, ("Home",)),
)
COLORS = ("Black", "White", "Grey", "Blue", "Red", "Green", "Beige", "Navy")


def catalog_frame(rng: np.random.Generator, item_ids: np.ndarray, category: np.ndarray, brand: np.ndarray,
                  price: np.ndarray, available: np.ndarray) -> pd.DataFrame:
    """The catalog in canonical item columns: a readable title, description and attributes per item."""
    n_items = len(item_ids)
    nouns = per_category_choice([c.nouns for c in CATEGORIES], category, rng.random(n_items))
    adjectives = per_category_choice([c.adjectives for c in CATEGORIES], category, rng.random(n_items))
    brand_names = np.array([b for c in CATEGORIES for b in c.brands], dtype=object)[brand]
    colors = np.array(COLORS, dtype=object)[rng.integers(0, len(COLORS), n_items)]
    category_names = np.array([c.name for c in CATEGORIES], dtype=object)[category]
    titles = brand_names + " " + adjectives + " " + nouns + " (" + colors + ")"
    descriptions = (
        adjectives + " " + pd.Series(nouns).str.lower().to_numpy(dtype=object) + " by " + brand_names
        + " in " + pd.Series(colors).str.lower().to_numpy(dtype=object) + ". Category: " + category_names + "."
    )
    attributes = [
        [f"color:{c.lower()}", f"brand:{b}", f"category:{k}"]
        for c, b, k in zip(colors, brand_names, category_names)
    ]
    return pd.DataFrame(
        {
            "item_id": item_ids,
            "title": titles,
            "category": category_names,
            "brand": brand_names,
            "price": price,
            "available": available,
            "description": descriptions,
            "attributes": attributes,
        }
    )


def per_category_choice(words_per_category: list[tuple[str, ...]], category: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A uniformly chosen word of each item's category (u in [0, 1) per item), vectorised."""
    width = max(len(w) for w in words_per_category)
    table = np.array([[w[i % len(w)] for i in range(width)] for w in words_per_category], dtype=object)
    sizes = np.array([len(w) for w in words_per_category])
    return table[category, (u * sizes[category]).astype(np.int64)]
