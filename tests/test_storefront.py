"""The storefront (GET /shop, ``services/storefront``) in headless Chromium against the real service.

One module-scoped shop (``tests.service_harness``: synthetic shop -> Feast with Redis -> quick
model promoted) and one ``bentoml serve`` with ``public_history_recommend`` on; Debian's
chromium driven by Playwright (``scripts/system-deps.sh chromium`` installs it; Playwright
downloads no browser). ``STOREFRONT_SCREENSHOT=docs/storefront.png`` saves the screenshot of
the docs.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.parse

import numpy as np
import pandas as pd
import pytest

from services.browsing import Listing
from services.guards import scope_of
from shoprec import impressions
from tests.service_harness import READ_TOKEN, WRITE_TOKEN, RedisServer, Server, call, prepare_shop, shop_settings
from tests.tools import require_tool

PORT, REDIS_PORT = 3630, 3631  # this suite's ports (docs: one range per test suite that serves)
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    home = tmp_path_factory.mktemp("storefront-home")
    redis = RedisServer(home / "redis", port=REDIS_PORT).start()
    settings = shop_settings(home, redis.port).with_overrides(serving={"public_history_recommend": True})
    info = prepare_shop(settings, epochs=1)  # the page is under test, not the model
    server = Server(settings, port=PORT, log_path=home / "serve.log").start(timeout=300)  # a loaded CI machine
    yield {"home": home, "server": server, "settings": settings, **info}
    server.stop()
    redis.kill()


@pytest.fixture(scope="module")
def browser():
    require_tool(CHROMIUM, "Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, shop):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    tab.errors = []
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.events_sent = []
    tab.on("request", lambda r: tab.events_sent.append(r.post_data_json) if r.url.endswith("/events") else None)
    tab.goto(shop["server"].url + "/shop")
    yield tab
    assert tab.errors == [], tab.errors  # no script error on the way
    context.close()


def known_user(shop) -> str:
    counts = shop["events"]["user_id"].value_counts()
    return str(counts[counts >= 5].index[-1])


def sign_in(page, user: str = "", read: str = READ_TOKEN, write: str = WRITE_TOKEN) -> None:
    page.fill("input[name=user]", user)
    page.fill("input[name=read]", read)
    page.fill("input[name=write]", write)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#recs .rec")


def recs(page) -> dict:
    """The recommendations the page shows now."""
    return page.eval_on_selector("#recs", """list => ({
        answer: Number(list.dataset.answer), recommendation_id: list.dataset.recommendationId,
        model_version: list.dataset.modelVersion, meta: document.getElementById('rec-meta').innerText,
        items: [...list.querySelectorAll('.rec')].map(li => ({
            item_id: li.dataset.itemId, title: li.querySelector('.title').innerText,
            reason: li.querySelector('.reason').innerText}))})""")


def click_and_wait(page, selector: str) -> dict:
    """Click, then wait for the next answer of "recommended for you"."""
    before = recs(page)["answer"]
    page.click(selector)
    deadline = time.monotonic() + 20  # polled from here: the page's CSP refuses Playwright's eval'd predicates
    while (now := recs(page))["answer"] <= before:
        assert time.monotonic() < deadline, f"no new recommendations after clicking {selector}"
        page.wait_for_timeout(50)
    return now


# --- the listing, in process ------------------------------------------------------------------
def test_the_listing_orders_by_popularity_and_searches_every_word():
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d", "e"],
                          "title": ["Red Kettle", "blue kettle", "Red Mug", "Green Kettle", None],
                          "category": ["Kitchen", "Kitchen", "Kitchen", "Garden", None],
                          "brand": ["Acme", None, "Acme", "Acme", None], "price": [1.0, 2.0, 3.0, 4.0, None]})
    # d is not in the model's vocabulary: after every item the model knows, whatever its title
    listing = Listing.build("v1", {"a": 0, "b": 1, "c": 2, "e": 3}, np.array([0.2, 0.9, 0.2, 0.0]), items)
    assert listing.frame["item_id"].tolist() == ["b", "a", "c", "e", "d"]
    assert listing.frame.loc[listing.frame["item_id"] == "e", "title"].item() == "e"  # no title: its id
    found = lambda q: listing.frame["item_id"].iloc[listing.matching(q)].tolist()  # noqa: E731
    assert found("KETTLE") == ["b", "a", "d"]
    assert found("acme kettle") == ["a", "d"] and found("red acme") == ["a", "c"]
    assert found("kitchen garden") == [] and found(None) == found("") == ["b", "a", "c", "e", "d"]
    assert listing.rows.get_indexer(["d", "zz", "b"]).tolist() == [4, -1, 0]


# --- the page and the catalog over plain HTTP --------------------------------------------
@pytest.mark.slow
def test_the_page_is_public_and_the_catalog_needs_the_read_token(shop):
    assert scope_of("/shop") == scope_of("/shop/shop.js") == "open" and scope_of("/items") == "read"
    server = shop["server"]
    status, body = call(server, "GET", "/shop/")
    assert status == 200 and "<title>ShopRec storefront</title>" in body
    assert call(server, "GET", "/shop/shop.js")[0] == 200
    assert call(server, "GET", "/shop/nothing-here.js")[0] == 404
    status, body = call(server, "GET", "/items")
    assert status == 401 and "read token" in body["error"]


@pytest.mark.slow
def test_items_are_paged_searched_and_looked_up(shop):
    server, catalog = shop["server"], shop["items"]
    status, first = call(server, "GET", "/items?offset=0&limit=10", token=READ_TOKEN)
    assert status == 200 and first["total"] == len(catalog) and len(first["items"]) == 10
    _, second = call(server, "GET", "/items?offset=10&limit=10", token=READ_TOKEN)
    assert not {i["item_id"] for i in first["items"]} & {i["item_id"] for i in second["items"]}
    word = next(c for c in catalog["category"].dropna() if " " not in c).lower()  # one word: q matches every word
    _, found = call(server, "GET", f"/items?limit=100&q={urllib.parse.quote(word.upper())}", token=READ_TOKEN)
    texts = (catalog["title"].fillna("") + " " + catalog["category"].fillna("") + " " + catalog["brand"].fillna("")).str.lower()
    assert found["total"] == int(texts.str.contains(word, regex=False).sum()) > 0
    assert all(word in f"{i['title']} {i['category']} {i['brand']}".lower() for i in found["items"])
    wanted = catalog["item_id"].astype(str).tolist()[:3][::-1]
    _, looked_up = call(server, "GET", "/items?" + "&".join(f"ids={i}" for i in [wanted[0], "no-such-item", *wanted[1:]]),
                        token=READ_TOKEN)
    assert [i["item_id"] for i in looked_up["items"]] == wanted and looked_up["total"] == 3
    prices = catalog.set_index("item_id")["price"]
    assert all(i["price"] == pytest.approx(prices[i["item_id"]]) for i in looked_up["items"] if i["price"] is not None)
    assert call(server, "GET", "/items?limit=1000", token=READ_TOKEN)[0] == 422
    assert call(server, "GET", "/items?q=" + "x" * 201, token=READ_TOKEN)[0] == 422


# --- the page in Chromium -------------------------------------------------------------------
@pytest.mark.slow
def test_a_click_on_a_recommendation_changes_the_next_ones(shop, page, tmp_path):
    user = known_user(shop)
    sign_in(page, user)
    page.wait_for_selector("#products .product")
    shown = recs(page)
    assert shown["model_version"] == shop["version"] and shop["version"] in shown["meta"]
    assert shown["items"] and all(item["reason"] for item in shown["items"])
    clicked = shown["items"][0]
    after = click_and_wait(page, f"#recs .rec[data-item-id='{clicked['item_id']}'] .title")
    assert page.inner_text("#detail-title") == clicked["title"]
    [view] = [e for e in page.events_sent if e["events"][0]["event_type"] == "view"]
    assert view["events"][0]["user_id"] == user and view["events"][0]["item_id"] == clicked["item_id"]
    assert shown["recommendation_id"] and view["events"][0]["recommendation_id"] == shown["recommendation_id"]
    assert "arm " in shown["meta"]
    # seen items are not shown again (serving.exclude "seen"), so the click must change the answer
    assert clicked["item_id"] not in [i["item_id"] for i in after["items"]]
    assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in shown["items"]]
    assert after["recommendation_id"] not in ("", shown["recommendation_id"])  # a new impression
    assert page.locator("#recs .rec.new").count() >= 1  # the picks the click brought in are marked
    shot = tmp_path / "storefront.png"
    page.screenshot(path=str(shot))
    if os.environ.get("STOREFRONT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["STOREFRONT_SCREENSHOT"])
    click_and_wait(page, "#add-to-cart")
    assert page.inner_text("#cart-count") == "1"
    click_and_wait(page, "#buy")
    assert "1 item(s) bought" in page.inner_text("#cart-status")
    sent = [e["events"][0]["event_type"] for e in page.events_sent]
    assert sent == ["view", "add_to_cart", "purchase"]


@pytest.mark.slow
def test_a_visitor_without_a_read_token_gets_recommendations_from_the_session(shop, page):
    """Anonymous: no shopper id, no read token: the catalog is closed, but the history-only
    /recommend is public (``public_history_recommend``) and follows what the visitor opens."""
    sign_in(page, user="", read="")
    assert "read token" in page.inner_text("#catalog-status")
    first = recs(page)
    assert "fallback" in first["meta"]  # an empty session: trending
    after = click_and_wait(page, "#recs .rec .title")
    assert "fallback" not in after["meta"] and after["items"] != first["items"]
    [view] = page.events_sent
    assert view["events"][0]["user_id"].startswith("visitor-") and view["events"][0]["session_id"].startswith("web-")


@pytest.mark.slow
def test_a_click_is_attributed_to_its_impression(shop, page):
    """The view and the add-to-cart the page sent count for the impression the item came from."""
    sign_in(page, known_user(shop))
    shown = recs(page)
    assert shown["recommendation_id"], "/recommend answers carry a recommendation_id"
    click_and_wait(page, "#recs .rec .title")
    click_and_wait(page, "#add-to-cart")  # the cart keeps the id of the list the item came from
    deadline = time.monotonic() + 30  # impressions are logged off the hot path
    while True:
        frame = impressions.attribute(shop["settings"])
        row = frame[frame["recommendation_id"] == shown["recommendation_id"]]
        if (len(row) and bool(row["added"].iloc[0])) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(row) == 1 and bool(row["clicked"].iloc[0]) and bool(row["added"].iloc[0]), frame.tail()
    assert not bool(row["purchased"].iloc[0]) and row["model_version"].iloc[0] == shop["version"]
