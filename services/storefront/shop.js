// The ShopRec storefront: browse, open an item, add to cart, buy; "recommended for you" after
// every step. Only the public API: GET /items, POST /recommend, /similar_items, /events.
// State (tokens, shopper, session, cart) lives in this tab's sessionStorage, never in this file.

const KEY = "shoprec.storefront";
const PAGE_SIZE = 12;
const RECS = 8;
const SIMILAR = 6;
const HISTORY_SENT = 50; // a visitor's recommendations come from the last items they opened

const $ = (id) => document.getElementById(id);
let state = load();
let page = { offset: 0, q: "", total: 0 };
let open = null; // the item shown in the detail pane, with the recommendation it came from
let lastRecs = [];
let answers = 0;

function load() {
  try { return JSON.parse(sessionStorage.getItem(KEY)) || null; } catch { return null; }
}

function save() { sessionStorage.setItem(KEY, JSON.stringify(state)); }

function randomHex(bytes = 16) {
  // crypto.randomUUID exists only in secure contexts; a shop may be opened over plain http on a LAN
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function money(price) { return price === null || price === undefined ? "" : `$${Number(price).toFixed(2)}`; }

function notice(text) { $("notice").textContent = text; }

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? `${status}: ${body.error}` : `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body, scope, headers = {}) {
  const token = scope === "write" ? state.write : state.read;
  const all = { "Content-Type": "application/json", ...headers };
  if (token) all.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { method, headers: all, body: body ? JSON.stringify(body) : undefined });
  const answer = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, answer);
  return answer;
}

async function lookup(ids) {
  // titles and prices of the given items, by id (GET /items?ids=...); {} without the read token
  if (!ids.length) return {};
  const query = ids.map((id) => `ids=${encodeURIComponent(id)}`).join("&");
  try {
    const answer = await api("GET", `/items?${query}&limit=${Math.max(ids.length, 1)}`, null, "read");
    return Object.fromEntries(answer.items.map((item) => [item.item_id, item]));
  } catch { return {}; }
}

// --- events ---------------------------------------------------------------------------------
async function send(eventType, itemId, extra = {}) {
  return sendAll([{ item_id: itemId, event_type: eventType, ...extra }]);
}

async function sendAll(events) {
  // one request, one Idempotency-Key: a retry of it is answered once (docs/service.md)
  if (!state.write) { notice("Not sent: sign in with the write token to record what you do."); return null; }
  const body = { events: events.map((e) => ({ user_id: shopperId(), session_id: state.session, ...e })) };
  for (const event of body.events) if (!event.recommendation_id) delete event.recommendation_id;
  try {
    return await api("POST", "/events", body, "write", { "Idempotency-Key": randomHex() });
  } catch (error) { notice(`Events not sent (${error.message})`); return null; }
}

function shopperId() { return state.user || state.visitor; }

// --- recommendations ------------------------------------------------------------------------
async function refreshRecs() {
  // session_id: an experiment splits visitors by session (a shopper by user id)
  const body = state.user ? { user_id: state.user, session_id: state.session, k: RECS }
    : { history: state.history.slice(-HISTORY_SENT), session_id: state.session, k: RECS };
  let answer;
  try { answer = await api("POST", "/recommend", body, "read"); } catch (error) {
    $("rec-meta").textContent = `No recommendations (${error.message})`;
    return;
  }
  const details = await lookup(answer.items.map((i) => i.item_id));
  renderRecs(answer, details);
}

function renderRecs(answer, details) {
  const before = new Set(lastRecs);
  const list = $("recs");
  list.replaceChildren(...answer.items.map((item) => recCard(item, answer, details[item.item_id], before)));
  lastRecs = answer.items.map((i) => i.item_id);
  answers += 1;
  list.dataset.answer = String(answers);
  list.dataset.recommendationId = answer.recommendation_id || "";
  list.dataset.modelVersion = answer.model_version || "";
  $("rec-meta").replaceChildren(...servedBy(answer));
}

function servedBy(answer) {
  // which model and experiment arm answered; recommendation_id names the impression
  const parts = [["model", answer.model_version], ["arm", answer.arm], ["experiment", answer.experiment],
    ["impression", answer.recommendation_id ? answer.recommendation_id.slice(0, 8) : null]];
  const shown = parts.filter(([, v]) => v).map(([k, v]) => el("span", { class: `tag tag-${k}` }, `${k} ${v}`));
  if (answer.fallback) shown.push(el("span", { class: "tag tag-fallback" }, "fallback"));
  return shown;
}

function recCard(item, answer, detail, before) {
  const title = detail ? detail.title : item.item_id;
  return el("li", { class: before.size && !before.has(item.item_id) ? "rec new" : "rec",
      "data-item-id": item.item_id, "data-recommendation-id": answer.recommendation_id },
    el("button", { type: "button", class: "link title", onclick: () => openItem(item.item_id, answer.recommendation_id) }, title),
    el("span", { class: "price" }, money(item.price ?? detail?.price)),
    el("span", { class: "reason" }, item.reason));
}

// --- catalog ----------------------------------------------------------------------------------
async function showPage() {
  const q = page.q ? `&q=${encodeURIComponent(page.q)}` : "";
  let answer;
  try { answer = await api("GET", `/items?offset=${page.offset}&limit=${PAGE_SIZE}${q}`, null, "read"); } catch (error) {
    $("catalog-status").textContent = error.status === 401
      ? "Browsing the catalog needs the read token: sign out and sign in with it." : `Catalog unavailable (${error.message})`;
    return;
  }
  page.total = answer.total;
  $("products").replaceChildren(...answer.items.map(productCard));
  const last = Math.min(page.offset + PAGE_SIZE, page.total);
  $("page-info").textContent = page.total ? `${page.offset + 1}\u2013${last} of ${page.total}` : "";
  $("catalog-status").textContent = page.total ? "" : `Nothing matches \u201c${page.q}\u201d.`;
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
}

function productCard(item) {
  return el("li", { class: item.available === false ? "product sold-out" : "product", "data-item-id": item.item_id },
    el("button", { type: "button", class: "link title", onclick: () => openItem(item.item_id, null) }, item.title),
    el("span", { class: "meta" }, [item.category, item.brand].filter(Boolean).join(" \u00b7 ")),
    el("span", { class: "price" }, item.available === false ? "sold out" : money(item.price)));
}

// --- one item -----------------------------------------------------------------------------------
async function openItem(itemId, recommendationId) {
  open = { item_id: itemId, recommendation_id: recommendationId, title: itemId, price: null };
  state.history = [...state.history.filter((i) => i !== itemId), itemId];
  save();
  const [details] = await Promise.all([lookup([itemId]), showSimilar(itemId)]);
  renderDetail(details[itemId]);
  await send("view", itemId, { recommendation_id: recommendationId });
  await refreshRecs();
}

function renderDetail(item) {
  if (item) Object.assign(open, { title: item.title, price: item.price, available: item.available });
  $("detail").hidden = false;
  $("detail").dataset.itemId = open.item_id;
  $("detail-title").textContent = open.title;
  $("detail-meta").textContent = item ? [item.category, item.brand].filter(Boolean).join(" \u00b7 ") : "";
  $("detail-price").textContent = open.available === false ? "sold out" : money(open.price);
  $("detail-description").textContent = item?.description || "";
  $("add-to-cart").disabled = open.available === false;
}

async function showSimilar(itemId) {
  let answer;
  try { answer = await api("POST", "/similar_items", { item_id: itemId, k: SIMILAR }, "read"); } catch {
    $("similar").replaceChildren(); return;
  }
  const details = await lookup(answer.items.map((i) => i.item_id));
  $("similar").replaceChildren(...answer.items.map((item) => el("li", { class: "similar", "data-item-id": item.item_id },
    el("button", { type: "button", class: "link title", onclick: () => openItem(item.item_id, null) },
      details[item.item_id]?.title || item.item_id),
    el("span", { class: "price" }, money(item.price)))));
}

// --- cart -----------------------------------------------------------------------------------------
async function addToCart() {
  const line = state.cart.find((l) => l.item_id === open.item_id);
  if (line) line.quantity += 1;
  else state.cart.push({ item_id: open.item_id, title: open.title, price: open.price, quantity: 1,
    recommendation_id: open.recommendation_id });
  save();
  renderCart();
  await send("add_to_cart", open.item_id, { recommendation_id: open.recommendation_id, price: open.price ?? undefined });
  await refreshRecs();
}

function renderCart() {
  $("cart-count").textContent = String(state.cart.reduce((n, l) => n + l.quantity, 0));
  $("cart-lines").replaceChildren(...state.cart.map((l) => el("li", { class: "line", "data-item-id": l.item_id },
    el("span", {}, `${l.quantity} \u00d7 ${l.title}`), el("span", { class: "price" }, money(l.price)))));
  const total = state.cart.reduce((sum, l) => sum + (l.price || 0) * l.quantity, 0);
  $("cart-total").textContent = state.cart.length ? `Total ${money(total)}` : "Your cart is empty.";
  $("buy").disabled = !state.cart.length;
}

async function buy() {
  const events = state.cart.map((l) => ({ item_id: l.item_id, event_type: "purchase", quantity: l.quantity,
    price: l.price ?? undefined, recommendation_id: l.recommendation_id }));
  const answer = await sendAll(events);
  if (!answer) return;
  $("cart-status").textContent = `Thank you! ${answer.accepted} item(s) bought.`;
  state.cart = [];
  save();
  renderCart();
  await refreshRecs();
}

// --- session ---------------------------------------------------------------------------------------
function signIn(form) {
  const data = new FormData(form);
  const user = String(data.get("user") || "").trim();
  state = { user: user || null, visitor: user ? null : `visitor-${randomHex(6)}`, read: String(data.get("read") || ""),
    write: String(data.get("write") || ""), session: `web-${randomHex(8)}`, history: [], cart: [] };
  save();
  form.reset();
  enter();
}

function signOut() {
  sessionStorage.removeItem(KEY);
  state = null;
  location.reload();
}

function enter() {
  $("signin").hidden = true;
  $("shop").hidden = false;
  $("signout").hidden = false;
  $("cart-button").hidden = false;
  $("who").textContent = state.user ? `Shopper ${state.user}` : `Visitor ${state.visitor}`;
  renderCart();
  showPage();
  refreshRecs();
}

function wire() {
  $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn(e.target); });
  $("signout").addEventListener("click", signOut);
  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    page = { offset: 0, q: new FormData(e.target).get("q").trim(), total: 0 };
    showPage();
  });
  $("prev").addEventListener("click", () => { page.offset = Math.max(0, page.offset - PAGE_SIZE); showPage(); });
  $("next").addEventListener("click", () => { page.offset += PAGE_SIZE; showPage(); });
  $("close-detail").addEventListener("click", () => { $("detail").hidden = true; open = null; });
  $("add-to-cart").addEventListener("click", addToCart);
  $("buy").addEventListener("click", buy);
  $("cart-button").addEventListener("click", () => $("cart").scrollIntoView({ behavior: "smooth" }));
}

wire();
if (state) enter(); else $("signin").hidden = false;
