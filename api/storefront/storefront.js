// The demo storefront: live stock from the product's event stream, and the buyer's path
// (reserve, release, order, pay) through the public API with a demo shopper's token.
"use strict";

const store = document.getElementById("store");
const productId = Number(store.dataset.product);
const $ = (id) => document.getElementById(id);
const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
const saved = window.sessionStorage;

let shopper = null;
let product = null;
let hold = null;
let order = null;
/** A button's request is under way: Reserve waits for it (no double submit). */
let busy = false;

/** Calls the API; resolves to the JSON body, or throws an Error with the API's message
 * (and its `code`). */
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (shopper) headers.Authorization = `Bearer ${shopper.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error(data.message || `the server answered ${resp.status}`);
    err.code = data.code;
    throw err;
  }
  return data;
}

function showError(err) {
  $("error").textContent = err ? err.message : "";
  $("error").hidden = !err;
}

function showNotice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

/** Runs a button's action with the button disabled, showing any error. */
async function act(button, action) {
  showError(null);
  showNotice(null);
  button.disabled = true;
  busy = true;
  try {
    await action();
  } catch (err) {
    showError(err);
    if (err.code === "invalid_token") await signInAgain();
  } finally {
    busy = false;
    button.disabled = false;
    render();
  }
}

/** The tab's token no longer verifies (the demo server restarted with a new secret, or
 * it expired): start over as a new shopper. */
async function signInAgain() {
  for (const key of ["flashsale.shopper", "flashsale.hold", "flashsale.order"]) {
    saved.removeItem(key);
  }
  shopper = null;
  hold = null;
  order = null;
  try {
    await signIn();
    showNotice("Your session had ended: you are now a new shopper. Please try again.");
  } catch (err) {
    showError(err);
  }
}

function clock(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const d = Math.floor(s / 86400);
  const hms = [Math.floor(s / 3600) % 24, Math.floor(s / 60) % 60, s % 60]
    .map((n) => String(n).padStart(2, "0"))
    .join(":");
  return d > 0 ? `${d}d ${hms}` : hms;
}

/** Draws the product, the hold and the order as they are now. */
function render() {
  if (product) {
    $("name").textContent = product.name;
    document.title = `${product.name} · flashsale demo store`;
    $("price").textContent = money.format(product.price_cents / 100);
    const stock = $("stock");
    if (stock.textContent !== String(product.available_stock)) {
      stock.textContent = product.available_stock;
      stock.classList.add("changed");
      setTimeout(() => stock.classList.remove("changed"), 600);
    }
    $("total").textContent = product.total_stock;
    const share = product.total_stock ? product.available_stock / product.total_stock : 0;
    $("meter-fill").style.width = `${Math.round(share * 100)}%`;
    const state = $("sale-state");
    state.dataset.state = product.sale_state;
    state.textContent = { upcoming: "Coming soon", live: "On sale now", ended: "Sale ended" }[
      product.sale_state
    ];
    $("limit").hidden = product.max_per_customer === null;
    $("limit").textContent = `Limit ${product.max_per_customer} per customer`;
    $("qty").max = product.max_per_customer || 10;
    // The product is limited per customer: a hold needs the shopper's token, which may
    // arrive after the stream's first event.
    // One hold at a time: while one is active, or its order is unpaid, Reserve waits.
    const cartOpen = (hold && hold.status === "active" && !order) || (order && order.status === "pending");
    $("reserve").disabled =
      !shopper || busy || cartOpen || product.sale_state !== "live" || product.available_stock === 0;
    $("reserve").textContent = product.available_stock === 0 ? "Sold out" : "Reserve";
  }
  tick();
  $("hold-card").hidden = !hold || hold.status !== "active" || order !== null;
  if (hold) {
    $("hold-summary").textContent = `${hold.qty} × ${product ? product.name : "item"}`;
  }
  $("order-card").hidden = !order;
  if (order) {
    $("order-id").textContent = `#${order.id}`;
    $("order-summary").textContent = `${order.qty} × ${product ? product.name : "item"}, ${money.format(order.total_cents / 100)}`;
    $("order-status").textContent = order.status;
    $("order-status").dataset.status = order.status;
    $("pay").hidden = order.status !== "pending";
  }
}

/** Updates the countdowns; called every quarter second. */
function tick() {
  const now = Date.now();
  const upcoming = product && product.sale_state === "upcoming" && product.sale_starts_at;
  $("countdown").hidden = !upcoming;
  if (upcoming) {
    $("countdown").textContent = `Sale starts in ${clock(Date.parse(product.sale_starts_at) - now)}`;
  }
  if (hold && hold.status === "active" && !order) {
    const left = Date.parse(hold.expires_at) - now;
    $("hold-timer").textContent = clock(left);
    if (left <= 0) {
      hold.status = "expired";
      remember();
      showNotice("Your hold expired: its units went back on sale.");
      render();
    }
  }
}

function remember() {
  saved.setItem("flashsale.hold", hold ? JSON.stringify(hold) : "");
  saved.setItem("flashsale.order", order ? JSON.stringify(order) : "");
}

async function reserve(event) {
  event.preventDefault();
  await act($("reserve"), async () => {
    const qty = Number($("qty").value);
    hold = await api("POST", "/api/holds", { product_id: productId, qty });
    order = null;
    remember();
  });
}

async function release() {
  await act($("release"), async () => {
    hold = await api("DELETE", `/api/holds/${hold.hold_id}`);
    remember();
    showNotice(
      hold.status === "released" ? "Released: the units are back on sale." : `Your hold ${hold.status}.`,
    );
  });
}

async function placeOrder() {
  await act($("order"), async () => {
    order = await api("POST", "/api/orders", { hold_id: hold.hold_id });
    remember();
  });
}

async function pay() {
  await act($("pay"), async () => {
    await api("POST", "/demo/payments", { hold_id: hold.hold_id });
    // The payment applies to the order at once when it exists; read its final status.
    for (let i = 0; i < 20 && order.status === "pending"; i += 1) {
      order = await api("GET", `/api/orders/${order.id}`);
      if (order.status === "pending") await new Promise((r) => setTimeout(r, 250));
    }
    remember();
  });
}

/** The live stock stream. The browser reconnects by itself when it drops, but not after
 * an answer that is no stream (a 503 while the server is restarting): then this does. */
function listen() {
  const events = new EventSource(`/api/products/${productId}/stream`);
  events.addEventListener("product", (e) => {
    product = JSON.parse(e.data);
    $("live-dot").classList.add("on");
    $("live-text").textContent = "Live stock: updates as shoppers buy";
    render();
  });
  events.onerror = () => {
    $("live-dot").classList.remove("on");
    $("live-text").textContent = "Live stock interrupted: reconnecting…";
    if (events.readyState === EventSource.CLOSED) {
      events.close();
      setTimeout(listen, 3000);
    }
  };
}

/** This tab's shopper: kept for the tab's life, so a reload keeps the cart. */
async function signIn() {
  const kept = saved.getItem("flashsale.shopper");
  shopper = kept ? JSON.parse(kept) : await api("POST", "/demo/shopper");
  saved.setItem("flashsale.shopper", JSON.stringify(shopper));
  $("shopper").textContent = `signed in as ${shopper.customer_id}`;
  const keptHold = saved.getItem("flashsale.hold");
  const keptOrder = saved.getItem("flashsale.order");
  hold = keptHold ? JSON.parse(keptHold) : null;
  order = keptOrder ? JSON.parse(keptOrder) : null;
  if (order) order = await api("GET", `/api/orders/${order.id}`).catch(() => null);
}

async function start() {
  $("reserve-form").addEventListener("submit", reserve);
  $("release").addEventListener("click", release);
  $("order").addEventListener("click", placeOrder);
  $("pay").addEventListener("click", pay);
  listen();
  setInterval(tick, 250);
  try {
    await signIn();
  } catch (err) {
    showError(err);
  }
  render();
}

start();
