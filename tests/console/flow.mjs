// Drives the admin console in headless Chromium (Debian's /usr/bin/chromium)
// with playwright-core, against a real stack the Rust test started
// (tests/it/console.rs, `the_console_works_in_a_browser`). Every step asserts;
// any failure exits 1 with the step's name. Screenshots of each page go to
// $SHOTS (not committed).
import { readFileSync } from "node:fs";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing ${k}`);
  return v;
};
// playwright-core is installed by the test into a cache, not beside this file.
const { chromium } = await import(env("PLAYWRIGHT"));
const BASE = env("BASE");
const SHOTS = env("SHOTS");
const ADMIN_KEY = env("ADMIN_KEY");
const READER_KEY = env("READER_KEY");
const DEAD = env("ORDER_DEAD");
const MANUAL = env("ORDER_MANUAL");
const DONE = env("ORDER_DONE");
const WAITING = env("ORDERS_WAITING").split(",");

let step = "start";
const check = (ok, what) => {
  if (!ok) throw new Error(`${step}: ${what}`);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
try {
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("dialog", (d) => d.accept());
  const shot = (name) => page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });

  step = "sign in";
  await page.goto(`${BASE}/admin/orders`);
  check(page.url().includes("/admin/login"), `not sent to the sign-in: ${page.url()}`);
  await shot("01-sign-in");
  await page.getByLabel("API key").fill(ADMIN_KEY);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Orders" }).waitFor();
  await shot("02-orders");

  step = "find an order by part of its number";
  await page.getByLabel("Search").fill(DEAD.slice(4, 10));
  await page.getByRole("button", { name: "Filter" }).click();
  await page.getByRole("link", { name: DEAD }).click();
  await page.getByRole("heading", { name: `Order ${DEAD}` }).waitFor();
  check(await page.locator("table.attempts").getByText("rejected the RCON password").first().isVisible(), "the attempt log shows the server's refusal");
  await shot("03-order-dead");

  step = "retry the dead delivery and watch it complete";
  await page.getByRole("button", { name: "Retry", exact: true }).first().click();
  await page.getByText("Retry queued").waitFor();
  // The page follows the order (a long poll) and reloads when it completes.
  await page.locator('.order[data-status="completed"]').waitFor({ timeout: 20000 });
  check(await page.getByText("give steve vip").first().isVisible(), "the command is shown");
  await shot("04-order-completed");

  step = "mark an item delivered";
  await page.goto(`${BASE}/admin/orders/${MANUAL}`);
  await page.getByText("Mark as delivered").first().click();
  await page.getByLabel("Code (optional)").fill("GIFT-0000-1111");
  await page.getByLabel("Notes for the customer").fill("Redeem at store.test/redeem");
  await page.locator("details form button[type=submit]", { hasText: "Mark as delivered" }).click();
  await page.getByText("The item is marked delivered.").waitFor();
  await page.locator('.order[data-status="completed"]').waitFor();
  await shot("05-marked-delivered");

  step = "refund partially";
  await page.goto(`${BASE}/admin/orders/${DONE}`);
  await page.getByLabel("Amount (empty: all that remains)").fill("1.00");
  await page.getByRole("button", { name: "Refund" }).click();
  await page.getByText("Refund recorded.").waitFor();
  check(await page.locator(".badge", { hasText: "partially refunded" }).first().isVisible(), "the order is partially refunded");
  await shot("06-refunded");

  step = "tick three orders and process them";
  await page.goto(`${BASE}/admin/orders?process_hold=manual`);
  for (const n of WAITING) {
    await page.getByLabel(`Select ${n}`).check();
  }
  await shot("07-selected");
  await page.getByRole("button", { name: "Process selected" }).click();
  await page.getByText("3 of 3 orders started").waitFor();
  await shot("08-processed");

  step = "export the filter as CSV";
  await page.goto(`${BASE}/admin/orders`);
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("link", { name: "CSV" }).click(),
  ]);
  const csv = readFileSync(await download.path(), "utf8");
  check(csv.split("\n")[0].includes("order_number"), `a header row: ${csv.slice(0, 200)}`);
  for (const n of [DEAD, MANUAL, DONE, ...WAITING]) check(csv.includes(n), `${n} in the export`);

  step = "export a ticked selection as CSV";
  await page.goto(`${BASE}/admin/orders`);
  await page.getByLabel(`Select ${DEAD}`).check();
  await page.getByLabel(`Select ${DONE}`).check();
  const [picked] = await Promise.all([
    page.waitForEvent("download"),
    page.locator("form#bulk").getByRole("button", { name: "CSV" }).click(),
  ]);
  const rows = readFileSync(await picked.path(), "utf8").trim().split("\n");
  check(rows.length === 3, `a header and the two ticked orders: ${rows.join(" | ")}`);
  check(rows.some((r) => r.includes(DEAD)) && rows.some((r) => r.includes(DONE)), "the ticked orders");
  check(!rows.some((r) => r.includes(MANUAL)), "an order not ticked");

  step = "the failures, alerts and reports pages";
  for (const [path, heading, name] of [
    ["/admin/failures", "Failures", "10-failures"],
    ["/admin/alerts?state=all", "Alerts", "11-alerts"],
    ["/admin/reports?group_by=product", "Reports", "12-reports"],
  ]) {
    await page.goto(`${BASE}${path}`);
    await page.getByRole("heading", { name: heading, exact: true }).waitFor();
    await shot(name);
  }
  check(await page.locator("figure.chart svg rect").count() > 0, "the report's chart has bars");

  step = "products: add keys to stock and upload a file";
  await page.goto(`${BASE}/admin/products`);
  await page.locator("#p-k details summary").click();
  await page.locator("#p-k textarea").fill("KEY-AAAA-0001\nKEY-AAAA-0002");
  await page.locator("#p-k button[type=submit]").click();
  await page.getByText("Keys added to stock.").waitFor();
  check(await page.locator("#p-k").getByText("2 keys available").isVisible(), "the stock level");
  await page.locator("#p-book input[type=file]").setInputFiles({
    name: "manual.pdf", mimeType: "application/pdf", buffer: Buffer.from("%PDF-1.4 a small manual"),
  });
  await page.locator("#p-book button[type=submit]").click();
  await page.getByText("File uploaded.").waitFor();
  check(await page.locator("#p-book").getByText("manual.pdf").isVisible(), "the file is listed");
  await shot("13-products");
  await page.getByRole("button", { name: "Test connection" }).first().click();
  await page.getByText("Connected, logged in and ran").waitFor();
  await shot("14-test-connection");

  step = "edit a product and a game server";
  await page.goto(`${BASE}/admin/products`);
  await page.getByRole("link", { name: "Edit Product k" }).click();
  await page.getByRole("heading", { name: "Edit product" }).waitFor();
  await shot("15-product-edit");
  await page.getByLabel("Name", { exact: true }).fill("Game key, edited");
  await page.getByRole("button", { name: "Save product" }).click();
  await page.getByText("Product saved.").waitFor();
  check(await page.getByRole("heading", { name: "Game key, edited" }).isVisible(), "the new name");
  await page.locator("#game-servers ~ table").getByRole("link", { name: "Edit" }).first().click();
  await page.getByRole("heading", { name: "Edit game server" }).waitFor();
  check(await page.getByLabel("RCON password").inputValue() === "", "the password is never shown");
  await page.getByLabel("Quiet time, ms").fill("400");
  await shot("16-game-server-edit");
  await page.getByRole("button", { name: "Save game server" }).click();
  await page.getByText("Game server saved.").waitFor();

  step = "a new webhook endpoint shows its secret once";
  await page.goto(`${BASE}/admin/webhooks`);
  await page.getByRole("link", { name: "New endpoint" }).click();
  await page.getByLabel("URL").fill("http://127.0.0.1:9/hooks");
  await page.getByLabel("every event").uncheck();
  await page.getByLabel("order.completed").check();
  await shot("17-webhook-new");
  await page.getByRole("button", { name: "Save endpoint" }).click();
  await page.getByText("Copy the signing secret now").waitFor();
  check((await page.locator("code.secret").innerText()).startsWith("whsec_"), "a secret");
  await shot("18-webhook-secret");
  await page.goto(`${BASE}/admin/webhooks`);
  check(await page.getByText("http://127.0.0.1:9/hooks").isVisible(), "the endpoint is listed");
  await shot("19-webhooks");

  step = "a request without the CSRF token is refused";
  const forged = await page.request.post(`${BASE}/admin/orders/${DONE}/complete`, { form: { notes: "x" } });
  check(forged.status() === 403, `status ${forged.status()}`);

  step = "sign out";
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await page.goto(`${BASE}/admin/orders`);
  check(page.url().includes("/admin/login"), "the session is over");

  step = "a read-only key sees no actions and is refused when it posts";
  await page.getByLabel("API key").fill(READER_KEY);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.goto(`${BASE}/admin/orders/${DONE}`);
  await page.getByRole("heading", { name: `Order ${DONE}` }).waitFor();
  for (const b of ["Refund", "Mark as completed", "Resend email", "Add note"]) {
    check((await page.getByRole("button", { name: b }).count()) === 0, `a read-only key sees ${b}`);
  }
  await shot("09-read-only");
  const token = await page.locator('input[name="csrf"]').first().inputValue();
  const refused = await page.request.post(`${BASE}/admin/orders/${DONE}/complete`, { form: { csrf: token } });
  check(refused.status() === 403, `a read-only POST answered ${refused.status()}`);

  step = "no script errors (CSP blocks nothing we ship)";
  check(errors.length === 0, errors.join("; "));
  console.log("console flow: all steps passed");
} catch (e) {
  console.error(String(e && e.stack || e));
  console.error(`at ${page.url()}`);
  await page.screenshot({ path: `${SHOTS}/failed.png`, fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
