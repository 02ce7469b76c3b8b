"""The pages in a real headless Chromium against the real `bentoml serve` on loopback.

Needs Debian's chromium (`apt-get install chromium`) and Playwright's Python package (no
browser download). Without a browser these tests skip, unless LEADSCORE_REQUIRE_BROWSER=1
(set by .ci/run), which turns the skip into a failure. With LEADSCORE_SCREENSHOTS=DIR the
pages are also saved there as PNG (`make screenshots` writes docs/img/).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from serving.batch import read_leads, score_batch
from serving.schemas import Lead
from serving.snapshots import write_snapshot
from tests.test_service import CHAMPION_NAME, _start, _stop

KEY = "page-key"
AS_OF = pd.Timestamp("2025-12-20 12:00:00")
OTHER_MODEL = "lead-scorer-flat-converted"
HOSTILE_NAME = '<img src=x onerror="window.__pwned=1">'
HOSTILE_COMPANY = "<script>window.__pwned=2</script>"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")

pytestmark = pytest.mark.slow


def _chromium() -> str | None:
    for path in (os.environ.get("LEADSCORE_CHROMIUM"), *CHROMIUM_PATHS):
        if path and Path(path).is_file():
            return path
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        message = "no headless browser: install Debian's chromium (apt-get install chromium) and playwright"
        if os.environ.get("LEADSCORE_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (LEADSCORE_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def scores_dir(champion, small_crm_dir, tmp_path_factory) -> Path:
    """A kept scoring of the small CRM's open leads, one of them with HTML in its name."""
    leads, acts, _ = read_leads(small_crm_dir, None)
    leads.loc[leads.index[0], ["first_name", "company"]] = [HOSTILE_NAME, HOSTILE_COMPANY]  # index: rows in the file
    result = score_batch(champion, leads, acts, AS_OF)
    folder = tmp_path_factory.mktemp("scores")
    meta = {"as_of": AS_OF.isoformat(), "model_name": champion.name, "model_version": champion.version}
    write_snapshot(result.scored, leads, acts, meta, folder)
    # A later scoring by another registered model (a flat CSV's, say): not what the pages show.
    other = {**meta, "model_name": OTHER_MODEL}
    renamed = result.scored.assign(lead_id="F" + result.scored["lead_id"])
    write_snapshot(renamed, leads.assign(lead_id="F" + leads["lead_id"]), acts.iloc[:0], other, folder)
    return folder


@pytest.fixture(scope="module")
def server(champion_store, scores_dir, monkeypatch_module):
    monkeypatch_module.setenv("LEADSCORE_SCORES_DIR", str(scores_dir))
    process, url, _ = _start(champion_store, KEY)
    yield url
    _stop(process)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    tab = context.new_page()
    yield tab
    context.close()


def _login(page, url: str, key: str = KEY, target: str = "/ui/digest") -> None:
    page.goto(f"{url}{target}")
    assert "/ui/login" in page.url  # no key yet: the form, not the page
    page.fill("input[name=key]", key)
    with page.expect_navigation():  # the form posts, then the page it leads to loads in full
        page.click("button[type=submit]")
    page.wait_for_load_state("load")


def _screenshot(page, name: str) -> None:
    folder = os.environ.get("LEADSCORE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=False)


def test_a_wrong_key_is_refused(page, server):
    _login(page, server, key="not-the-key")
    assert "That key is not valid" in page.content()
    assert "Pipeline digest" not in page.title()
    assert httpx.get(f"{server}/ui/model", cookies={"leadscore_key": "nope"}, follow_redirects=False).status_code == 303


def test_the_pages_cookie_is_no_api_key(page, server):
    """It held the key itself: read off a browser, it was a key to the API as well."""
    _login(page, server)
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "leadscore_key"]
    assert KEY not in cookie["value"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert not cookie["secure"]  # plain HTTP on loopback: a Secure cookie would never come back
    assert cookie["expires"] == -1  # ends with the browser session (the service refuses it after 12 hours)
    signed_in = httpx.get(f"{server}/ui/model", cookies={"leadscore_key": cookie["value"]}, follow_redirects=False)
    assert signed_in.status_code == 200
    assert httpx.get(f"{server}/model", headers={"Authorization": f"Bearer {cookie['value']}"}).status_code == 401
    assert httpx.get(f"{server}/ui/model", cookies={"leadscore_key": KEY}, follow_redirects=False).status_code == 303
    # Behind a TLS proxy the browser is told never to send it over plain HTTP.
    proxied = httpx.post(f"{server}/ui/login", data={"key": KEY}, headers={"X-Forwarded-Proto": "https"})
    assert proxied.status_code == 303 and "secure" in proxied.headers["set-cookie"].lower(), proxied.headers


def test_digest_filters(page, server):
    _login(page, server)
    assert page.url.endswith("/ui/digest")
    _screenshot(page, "digest")
    all_rows = page.locator("#leads tr[data-stage]").count()
    assert all_rows > 0
    stages = page.locator("#leads tr[data-stage]").evaluate_all("rows => rows.map(r => r.dataset.stage)")
    wanted = sorted(set(stages), key=stages.count)[0]  # the rarest stage: a filter that removes rows
    page.select_option("select[name=stage]", wanted)
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*stage=.*"))
    shown = page.locator("#leads tr[data-stage]").evaluate_all("rows => rows.map(r => r.dataset.stage)")
    assert shown and set(shown) == {wanted}
    owners = page.locator("select[name=owner] option").evaluate_all("o => o.map(x => x.value).filter(Boolean)")
    page.select_option("select[name=owner]", owners[0])
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*owner=.*"))
    script = "rows => rows.map(r => [r.dataset.owner, r.dataset.stage])"
    rows = page.locator("#leads tr[data-stage]").evaluate_all(script)
    assert all(owner == owners[0] and stage == wanted for owner, stage in rows)
    # The served model's scoring, not the newer one of another model.
    assert f"{CHAMPION_NAME} v" in page.content() and OTHER_MODEL not in page.content()
    # A filter typed into the address in another case is that value ("no lead matches" before).
    page.goto(f"{server}/ui/digest?stage={wanted.lower()}&owner={owners[0].upper()}")
    assert page.locator("#leads tr[data-stage]").evaluate_all(script) == rows
    assert page.locator("select[name=stage]").input_value() == wanted
    # A mistyped address is a page with the navigation, not the API's JSON error.
    missing = page.goto(f"{server}/ui/nothing-here")
    assert missing.status == 404 and page.locator("h1").inner_text() == "No such page"
    assert "/ui/nothing-here" in page.locator("main").inner_text()
    # A name typed where the id goes opens its lead.
    page.goto(f"{server}/ui/digest")
    link = page.locator("#leads a[href^='/ui/leads/']").first
    lead_id, name = link.get_attribute("href").rsplit("/", 1)[1], link.inner_text().split(" (")[0]
    page.goto(f"{server}/ui/leads?lead={name}")
    named = page.locator("#lead-id").inner_text() if page.locator("#lead-id").count() else None
    assert named == lead_id or f"q={name.split()[0]}" in page.url, (name, page.url)
    # Signing out forgets the key: the next page asks for it again.
    with page.expect_navigation():
        page.click("header a[href='/ui/logout']")
    assert "/ui/login" in page.url
    page.goto(f"{server}/ui/digest")
    assert "/ui/login" in page.url


def _score_request(rows: pd.DataFrame, acts: pd.DataFrame) -> dict:
    """The /score body the CRM would send for the lead of a snapshot (its export cells)."""
    lead = {k: v for k, v in rows.iloc[0].to_dict().items() if v not in ("", None)}
    for name in ("employees", "annual_revenue"):
        if name in lead:
            lead[name] = float(lead[name])
    for name in ("do_not_contact", "sales_accepted"):
        if name in lead:
            lead[name] = lead[name].strip().lower() in ("true", "yes", "1")
    lead["activities"] = [
        {"occurred_at": a.occurred_at, "activity_type": a.activity_type} for a in acts.itertuples() if a.occurred_at
    ]
    return {"leads": [lead], "as_of": AS_OF.isoformat()}


def test_a_rep_on_a_phone_reads_each_lead_without_swiping(page, server):
    """At 375 px the leads table was 618 px wide (the stage, owner and reason a swipe away), the
    grade check 17,000 px down behind a link shown only to a keyboard, and a 417 px chart blown
    up to 540 px with 24 px text."""
    _login(page, server)
    page.set_viewport_size({"width": 375, "height": 812})
    page.goto(f"{server}/ui/digest")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    edges = page.locator("#leads tbody td").evaluate_all(
        "cells => cells.filter(c => c.offsetParent).map(c => c.getBoundingClientRect().right)"
    )
    assert edges and max(edges) <= 375, max(edges)
    named = (
        page.locator("#leads tbody tr")
        .first.locator("td")
        .evaluate_all("cells => cells.map(c => getComputedStyle(c, '::before').content)")
    )
    assert any("stage" in n for n in named) and any("grade" in n for n in named), named  # each value named
    skip_width = "a => a.getBoundingClientRect().width"  # hidden, it is one pixel: "visible" to Playwright
    assert page.locator("a.skip").evaluate(skip_width) > 100 and page.locator("#ranks-meaning").is_visible()
    widths = page.locator("section > svg").evaluate_all(
        "charts => charts.map(c => [c.classList.contains('chart-wide'), c.getBoundingClientRect().width])"
    )
    assert widths and all(wide or width <= 375 for wide, width in widths), widths
    page.set_viewport_size({"width": 1200, "height": 900})
    assert page.locator("#leads thead").evaluate("h => h.getBoundingClientRect().width") > 375
    assert page.locator("a.skip").evaluate(skip_width) <= 1


def test_lead_page_shows_what_score_returns(page, server, scores_dir):
    from serving.snapshots import latest_two

    latest, _ = latest_two(scores_dir, CHAMPION_NAME)
    best = latest.scores.sort_values("score", ascending=False)
    for lead_id in best["lead_id"]:
        rows, acts = latest.lead(lead_id)
        try:
            body = _score_request(rows, acts)
            Lead.model_validate(body["leads"][0])
        except ValueError:  # a dirty cell an export may hold; a CRM call would carry a clean value
            continue
        break
    served = httpx.post(f"{server}/score", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert served.status_code == 200, served.text
    expected = served.json()[0]
    _login(page, server, target=f"/ui/leads/{lead_id}")
    assert page.locator("#lead-id").inner_text() == lead_id
    _screenshot(page, "lead")
    assert page.locator("#score").inner_text() == f"{expected['score']:.1f}"
    assert page.locator("#grade").inner_text() == expected["grade"]
    assert page.locator("#stage").inner_text() == expected["stage"]
    stage_reason = page.locator("#stage-reason").inner_text()
    assert stage_reason == expected["stage_reason"].removeprefix(f"{expected['stage']}: ")
    assert not stage_reason.startswith(f"{expected['stage']}:")  # the stage is shown once, just before
    reasons = page.locator("#reasons li").all_inner_texts()
    assert reasons == [r["text"] for r in expected["reasons"]]
    if any(r["feature"] == "engagement_decayed" for r in expected["reasons"]):  # its unit is said
        said = page.locator("#activity-level").inner_text()
        assert "demo request 8" in said and "half as much every 14 days" in said, said
    else:
        assert page.locator("#activity-level").count() == 0
    assert page.locator("#to-sql").inner_text().strip()
    assert page.locator("svg").count() >= 1
    charts = page.locator("svg").evaluate_all("charts => charts.map(c => c.getAttribute('aria-label') || '')")
    assert any(f"to this lead's {expected['score']:.1f}" in label for label in charts), charts
    # On a phone the picture showed labels and no bars (its bars past the screen's edge): there
    # each factor's label sits over its bar, all within the screen.
    assert not page.locator(".narrow-waterfall").is_visible()
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.locator(".narrow-waterfall").is_visible() and not page.locator(".wide-chart").is_visible()
    rows = page.locator(".narrow-waterfall li").all_inner_texts()
    assert rows[0].startswith("Typical lead") and rows[-1] == f"This lead {expected['score']:.1f}", rows
    edges = page.locator(".wf-bar").evaluate_all("bars => bars.map(b => b.getBoundingClientRect().right)")
    assert len(edges) == len(rows) and max(edges) <= 375, edges
    page.set_viewport_size({"width": 1200, "height": 900})
    if "Other factors" in page.locator(".narrow-waterfall").inner_text():  # what it sums, when asked
        page.click("#other-factors summary")
        assert re.match(r"[A-Z].*: [+-]\d+\.\d", page.locator("#other-factors p").inner_text())

    # The CRM's request body pasted into the form: scored as of its as_of, so the same numbers.
    page.goto(f"{server}/ui/leads")
    page.fill("textarea[name=lead]", json.dumps(body))
    with page.expect_navigation():
        page.click("#paste button[type=submit]")
    assert page.locator("#lead-id").inner_text() == lead_id
    assert page.locator("#score").inner_text() == f"{expected['score']:.1f}"
    assert page.locator("#reasons li").all_inner_texts() == reasons
    page.goto(f"{server}/ui/leads")
    page.fill("textarea[name=lead]", '{"lead_id": "x", "employees": "many"}')
    with page.expect_navigation():
        page.click("#paste button[type=submit]")
    assert "employees" in page.locator(".error").inner_text()
    # The id box, with the spaces a copy from a CRM screen brings along.
    page.fill("#pick input[name=lead]", f" {lead_id} ")
    with page.expect_navigation():
        page.click("#pick button[type=submit]")
    assert page.locator("#lead-id").inner_text() == lead_id


def test_html_in_crm_data_is_shown_as_text(page, server, scores_dir):
    from serving.snapshots import latest_two

    latest, _ = latest_two(scores_dir, CHAMPION_NAME)
    hostile = latest.scores[latest.scores["company"] == HOSTILE_COMPANY].iloc[0]
    _login(page, server, target=f"/ui/leads/{hostile['lead_id']}")
    assert HOSTILE_COMPANY in page.locator("h1").inner_text()
    assert page.evaluate("window.__pwned") is None
    assert page.locator("h1 img, h1 script").count() == 0
    # The digest narrowed to the lead's owner, stage and grade lists it, as text.
    page.goto(f"{server}/ui/digest?owner={hostile['owner']}&stage={hostile['stage']}&grade={hostile['grade']}")
    assert page.evaluate("window.__pwned") is None
    assert page.get_by_text(HOSTILE_COMPANY, exact=False).count() >= 1
    assert "<script>window.__pwned" not in page.content()


def test_pages_run_no_script_and_cannot_be_framed(page, server, scores_dir):
    """Markup that slipped past escaping would not run, and no other site can frame a page to
    have a signed-in manager click through it."""
    _login(page, server)
    header = page.locator("header").evaluate("h => getComputedStyle(h).backgroundColor")
    assert header == "rgb(38, 50, 56)"  # the inline styles still apply
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';"
        " document.head.appendChild(s); }"
    )
    assert page.evaluate("window.__ran") is None
    page.set_content(f'<iframe src="{server}/ui/digest" width="600" height="400"></iframe>')
    page.wait_for_timeout(500)
    framed = [frame for frame in page.frames if frame != page.main_frame]
    assert framed and framed[0].locator("header").count() == 0, [f.url for f in page.frames]  # not even the sign-in


AXE_SCRIPT = Path(__file__).resolve().parents[1] / ".cache" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
AXE_RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


@pytest.fixture(scope="module")
def axe_script() -> Path:
    if not AXE_SCRIPT.is_file():
        message = "no axe-core for the accessibility checks: `make axe` fetches it with npm"
        if os.environ.get("LEADSCORE_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (LEADSCORE_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    return AXE_SCRIPT


def _axe_violations(page, script: Path) -> list[str]:
    """What axe-core finds against WCAG 2.1 AA and its best practices on the page as it is."""
    page.evaluate(script.read_text(encoding="utf-8"))  # as devtools run it: the pages' policy allows no script
    found = page.evaluate("rules => axe.run(document, {runOnly: {type: 'tag', values: rules}})", AXE_RULES)
    return [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes'][:3]]}" for v in found["violations"]]


def test_pages_meet_wcag_aa_on_a_laptop_and_a_phone(page, server, scores_dir, axe_script):
    """axe-core on every page and its error states, 1200 and 375 pixels wide: a rep on a
    keyboard, a screen reader or a phone can use each (a chart that scrolled sideways on a phone
    could not be reached from the keyboard)."""
    from serving.snapshots import latest_two

    lead_id = latest_two(scores_dir, CHAMPION_NAME)[0].scores["lead_id"].iloc[0]
    _login(page, server)
    states = {
        "digest": "/ui/digest",
        "digest, no match": "/ui/digest?stage=nurture&q=nobody-at-all",
        "pick": "/ui/leads",
        "lead": f"/ui/leads/{lead_id}",
        "unknown lead": "/ui/leads/NO-SUCH-LEAD",
        "model": "/ui/model",
    }
    found = {}
    for width in (1200, 375):
        page.set_viewport_size({"width": width, "height": 900})
        for name, path in states.items():
            page.goto(f"{server}{path}")
            found[f"{name} at {width}px"] = _axe_violations(page, axe_script)
        page.goto(f"{server}/ui/leads")
        page.fill("textarea[name=lead]", "{not json")
        with page.expect_navigation():
            page.click("#paste button[type=submit]")
        found[f"bad paste at {width}px"] = _axe_violations(page, axe_script)
    assert not any(found.values()), {state: v for state, v in found.items() if v}
    with page.expect_navigation():
        page.click("header a[href='/ui/logout']")
    assert "Signed out" in page.locator("[role=status]").inner_text()
    page.fill("input[name=key]", "not-the-key")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert not _axe_violations(page, axe_script)


def test_errors_are_announced_and_tied_to_their_field(page, server, scores_dir):
    from serving.snapshots import latest_two

    _login(page, server, target="/ui/leads")
    assert page.locator("header nav a[aria-current=page]").inner_text() == "Open a lead"
    page.fill("textarea[name=lead]", "{not json")
    with page.expect_navigation():
        page.click("#paste button[type=submit]")
    field = page.locator("textarea[name=lead]")
    assert field.get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.name") == "lead"  # focus on the field to fix
    error = page.locator("#" + field.get_attribute("aria-describedby").split()[0])
    assert error.get_attribute("role") == "alert" and error.inner_text().startswith("Not JSON")
    assert page.title().startswith("Pasted lead not read")
    page.goto(f"{server}/ui/leads/NO-SUCH-LEAD")
    typed = page.locator("#pick input[name=lead]")
    assert typed.input_value() == "NO-SUCH-LEAD" and typed.get_attribute("aria-invalid") == "true"
    assert page.title().startswith("Lead not found") and page.locator("h1").inner_text() == "Lead not found"
    assert page.locator("#pick-error a").get_attribute("href") == "/ui/digest?q=NO-SUCH-LEAD"
    lead_id = latest_two(scores_dir, CHAMPION_NAME)[0].scores["lead_id"].iloc[0]
    page.goto(f"{server}/ui/leads/{lead_id.lower()}")  # an id typed in lower case is the lead
    assert page.locator("#lead-id").inner_text() == lead_id
    # The skip link moves the focus past the leads to the grades, whose chart scrolls on a phone.
    page.goto(f"{server}/ui/digest")
    page.focus("a.skip")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "grades"
    # The digest's title says which leads it shows; its pages are linked above the table as well.
    page.goto(f"{server}/ui/digest?stage=nurture&q=nobody-at-all")
    assert page.title().startswith('Pipeline digest: stage nurture, "nobody-at-all": no lead matches')
    assert page.locator("#leads").count() == 0  # no empty table to tab into


def test_model_page(page, server):
    _login(page, server, target="/ui/model")
    _screenshot(page, "model")
    text = page.locator("main").inner_text()
    assert CHAMPION_NAME in text
    assert "Qualification criteria" in text
    # Refit on training and validation together: why the training window holds the calibration one.
    assert "(the validation period included) · calibrated on" in text, text[:600]
    assert "How each factor moves scores" in text, text[-300:]
    # The beeswarm says how many leads it shows, and that its ranges are a sample's when they are.
    shown = re.search(r"On (\d+) leads of the latest scoring \((a sample drawn alike each time|all of them)", text)
    assert shown and 0 < int(shown.group(1)) <= 400, text[text.index("How each factor") :][:1500]
    # What the beeswarm's colours say, in words: one line per factor it shows.
    words = page.locator("#words-h + ul li").all_inner_texts()
    assert len(words) == 10 and any("higher values raise the score" in line for line in words), words
    assert any("points on average" in line for line in words), words
    assert not any(" not lowers" in line or " not raises" in line for line in words), words  # BANT "not there"
    criteria = page.locator("main").inner_text()
    assert "Disqualified, opted out: Do not contact" in criteria and "do_not_contact:" not in criteria
    assert page.locator("svg").count() >= 2  # importance, calibration, lift
    # A screen reader gets each chart's data in words, not its tick labels.
    labels = page.locator("svg").evaluate_all("charts => charts.map(c => c.getAttribute('aria-label'))")
    assert all(labels) and any(label.startswith("Observed conversion against predicted") for label in labels)
    # What drives scores overall counts the reasons' points, not log-odds.
    assert any(label.startswith("mean absolute effect (score points)") for label in labels), labels
    assert "in score points as the reasons count them" in text
    assert not page.locator("#drives-h ~ .narrow-waterfall").is_visible()
    # On a phone nothing makes the whole page pan sideways (a chart row was 480 px at least).
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    # What drives scores is a list there: the chart's labels left its bars past the screen's edge.
    drives = page.locator("#drives-h ~ .narrow-waterfall")
    assert drives.is_visible() and not page.locator("#drives-h ~ .wide-chart").is_visible()
    bars = drives.locator(".wf-bar").evaluate_all("bars => bars.map(b => b.getBoundingClientRect().right)")
    assert len(bars) == drives.locator("li").count() > 1 and max(bars) <= 375, bars
    widths = drives.locator(".wf-bar").evaluate_all("bars => bars.map(b => b.getBoundingClientRect().width)")
    assert widths == sorted(widths, reverse=True) and widths[0] > 0, widths  # largest first, as the chart


def test_path_to_sql_is_checked_with_the_model(champion, scores_dir):
    from serving.scoring import prepare_crm_leads, score_features
    from serving.snapshots import latest_two
    from serving.whatif import ACTIONS, path_to_sql

    latest, _ = latest_two(scores_dir, CHAMPION_NAME)
    near = latest.scores[latest.scores["stage"].isin(["MQL", "nurture"])].sort_values("score", ascending=False)
    found = None
    for lead_id in near["lead_id"].head(15):
        rows, acts = latest.lead(lead_id)
        result = path_to_sql(champion, rows, acts, AS_OF)
        if result.bant_needed:
            assert "on a call" in result.message and result.score is not None, result.message
            continue
        if result.steps:
            found = (rows, acts, result)
            break
        assert result.message.startswith(("Nothing is near", "Disqualified")), result.message
    assert found is not None, "no lead among the 15 best MQL/nurture leads has a path to SQL"
    rows, acts, result = found
    assert set(result.steps) <= set(ACTIONS) and len(result.steps) <= 3
    moment = (AS_OF - pd.Timedelta(hours=1)).isoformat()
    lead_id = rows["lead_id"].iloc[0]
    added = pd.DataFrame({"lead_id": lead_id, "occurred_at": moment, "activity_type": list(result.steps)})
    moments = pd.Series([AS_OF])
    features, context, _, _ = prepare_crm_leads(
        champion, rows, pd.concat([acts, added], ignore_index=True).fillna(""), moments, strict=False
    )
    rescored = score_features(champion, features, context, moments).iloc[0]
    assert rescored["stage"] == "SQL" and rescored["score"] == pytest.approx(result.score)
    # An SQL lead's page says the SQL action the rules set, not a text of its own.
    sql = latest.scores[latest.scores["stage"] == "SQL"]["lead_id"].iloc[0]
    already = path_to_sql(champion, *latest.lead(sql), AS_OF)
    assert already.message == f"Already SQL: {champion.criteria.next_actions['SQL']}"
    # A lead off the profile is told which of the profile's criteria it misses.
    off = latest.scores[latest.scores["stage_reason"].str.contains("ideal customer profile")]["lead_id"].iloc[0]
    rows, acts = latest.lead(off)
    told = path_to_sql(champion, rows, acts, AS_OF).message
    missed = told.split(" Not met: ")[1]
    for column in ("industry", "seniority", "department", "country"):
        value = rows[column].iloc[0]
        if not isinstance(value, str) or not value.strip():
            assert f"{column} blank" in missed, told
        elif value.strip().casefold() not in {v.casefold() for v in getattr(champion.feature_params.icp, {
                "industry": "industries", "seniority": "seniorities", "department": "departments",
                "country": "countries"}[column])}:  # fmt: skip
            assert f"{column} {value.strip()}" in missed, told


def test_a_path_to_sql_leaning_on_a_hand_raise_about_to_lapse_says_until_when(champion):
    """ "Confirm 2 more BANT answers on a call: whichever they are, the lead is then SQL" of a lead
    whose demo request was 29.5 days old: a day later the same answers made it MQL (40.1), while
    its next action said to call within three days."""
    from serving.whatif import _lapses

    assert champion.criteria.sql.require_hand_raise and champion.criteria.hand_raise_days == 30
    said = _lapses(champion, pd.Series({"days_since_demo_request": 29.46, "days_since_meeting": float("nan")}), AS_OF)
    until = AS_OF + pd.Timedelta(days=30 - 29.46)
    assert said == (f" Only until {until.floor('min'):%Y-%m-%d %H:%M} UTC: the demo request of "
                    f"{AS_OF - pd.Timedelta(days=29.46):%Y-%m-%d} counts for SQL 30 days; after that the lead needs "
                    "a new hand-raise.")  # fmt: skip
    assert _lapses(champion, pd.Series({"days_since_demo_request": 29.46, "days_since_meeting": 3.0}), AS_OF) == ""
    assert _lapses(champion, pd.Series({"days_since_demo_request": 12.0}), AS_OF) == ""  # weeks left


def _scored_whole(champion, rows: pd.DataFrame, acts: pd.DataFrame, scenarios: list) -> pd.DataFrame:
    """Each (BANT answers confirmed, steps added) scenario of a lead built whole, as a lead of its
    own with its history, and scored: the reference `path_to_sql` is checked against."""
    from serving.scoring import prepare_crm_leads, score_features

    moment = (AS_OF - pd.Timedelta(hours=1)).isoformat()
    lead_rows, act_rows = [], []
    for i, (answers, steps) in enumerate(scenarios):
        lead_rows.append(rows.assign(lead_id=f"s{i}", **dict.fromkeys(answers, "confirmed")))
        act_rows.append(acts.assign(lead_id=f"s{i}"))
        act_rows += [pd.DataFrame({"lead_id": [f"s{i}"], "occurred_at": [moment], "activity_type": [k]}) for k in steps]
    moments = pd.Series([AS_OF] * len(lead_rows))
    features, context, positions, _ = prepare_crm_leads(
        champion, pd.concat(lead_rows, ignore_index=True), pd.concat(act_rows, ignore_index=True).fillna(""),
        moments, strict=False,
    )  # fmt: skip
    scored = score_features(champion, features, context, moments.iloc[positions], with_reasons=False)
    scored["steps"] = [scenarios[p][1] for p in positions]
    return scored


def test_path_to_sql_scores_the_bant_answers_a_call_must_get(champion, scores_dir):
    """A lead that engagement alone cannot make SQL because BANT answers are missing is told how
    many to confirm and the fewest steps that, with any such answers, make it SQL. The answers
    were not scored (the rule alone re-applied), so reps were asked for more steps than needed
    and told "Nothing is near" of leads a demo and a call would make SQL."""
    from itertools import combinations

    from features.schema import BANT_FIELDS
    from serving.snapshots import latest_two
    from serving.whatif import ACTIONS, path_to_sql

    latest, _ = latest_two(scores_dir, CHAMPION_NAME)
    best = latest.scores[latest.scores["stage"].isin(["MQL", "nurture"])].sort_values("score").iloc[-1]
    rows, acts = latest.lead(best["lead_id"])
    rows = rows.assign(**dict.fromkeys(BANT_FIELDS, ""))  # none confirmed
    result = path_to_sql(champion, rows, acts, AS_OF)
    needed = champion.criteria.sql.min_bant_confirmed
    assert result.bant_needed == needed and "whichever they are" in result.message, result.message
    assert f"{needed} more BANT answers confirmed on a call" in result.message or result.message.startswith(
        f"Confirm {needed} more BANT answers on a call"
    )

    # Scored apart, one scenario at a time: each set of fewer steps, and the one said, with each choice of answers.
    sets = [steps for size in range(len(result.steps)) for steps in combinations(ACTIONS, size)] + [result.steps]
    scenarios = [(chosen, steps) for steps in sets for chosen in combinations(BANT_FIELDS, needed)]
    scored = _scored_whole(champion, rows, acts, scenarios)
    said = scored[scored["steps"] == result.steps]
    assert len(said) == len(list(combinations(BANT_FIELDS, needed))) and (said["stage"] == "SQL").all()
    assert said["score"].min() == pytest.approx(result.score)  # the score reached whichever answers
    fewer = scored[scored["steps"].map(len) < len(result.steps)]
    assert not fewer.groupby(fewer["steps"].map(str))["stage"].agg(lambda s: (s == "SQL").all()).any()


def test_path_to_sql_scores_answers_as_a_lead_built_whole_would_score(champion, scores_dir):
    """The answers are put on the features of the lead with each set of steps, not built again
    with its whole history per choice (seconds and a gigabyte for a lead of 5,000 activities):
    the scores must be those of each scenario built whole."""
    from itertools import combinations

    from features.schema import BANT_FIELDS
    from serving.snapshots import latest_two
    from serving.whatif import _score_steps, _with_answers

    latest, _ = latest_two(scores_dir, CHAMPION_NAME)
    lead_id = latest.scores[latest.scores["stage"].isin(["MQL", "nurture"])]["lead_id"].iloc[0]
    rows, acts = latest.lead(lead_id)
    rows = rows.assign(**{**dict.fromkeys(BANT_FIELDS, ""), "budget": "not"})
    chosen = list(combinations(BANT_FIELDS, 2))
    fast = _with_answers(champion, _score_steps(champion, rows, acts, AS_OF, None), rows, chosen, None)
    whole = _scored_whole(champion, rows, acts, list(zip(fast["answers"], fast["steps"], strict=True)))
    assert len(whole) == len(fast) == 64 * len(chosen)
    assert whole["score"].tolist() == fast["score"].tolist()
    assert whole["stage"].tolist() == fast["stage"].tolist()


def test_static_report(champion, scores_dir, tmp_path):
    from serving.pages import lead_href, write_report
    from serving.snapshots import latest_two

    assert latest_two(scores_dir)[0].meta["model_name"] == OTHER_MODEL  # the newest of any model
    latest, previous = latest_two(scores_dir, champion.name)
    assert previous is None  # the other model's scoring is not the one before
    hostile = latest.scores.loc[latest.scores["company"] == HOSTILE_COMPANY, "lead_id"].iloc[0]
    others = latest.scores.loc[latest.scores["lead_id"] != hostile, "lead_id"].head(2)
    ids = [hostile, *others, "no-such-lead"]
    missing = write_report(champion, latest, previous, ids, tmp_path)
    assert missing == ["no-such-lead"]
    pages = sorted(p.name for p in tmp_path.iterdir())
    assert "index.html" in pages and "model.html" in pages and len(pages) == 2 + 3
    index = (tmp_path / "index.html").read_text()
    assert "&lt;script&gt;window.__pwned=2&lt;/script&gt;" in index and "<script>window.__pwned" not in index
    assert "/ui/" not in index  # links stay within the report
    assert """<meta http-equiv="Content-Security-Policy" content="default-src &#39;none&#39;""" in index
    # Written again for other leads, the folder holds their pages alone (the others' stayed).
    write_report(champion, latest, previous, [others.iloc[0]], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["index.html", "model.html", lead_href(others.iloc[0], True)]
    )
    # Stopped part way, the report before stays whole: its digest is written last, after its pages.
    import serving.pages

    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(serving.pages, "scored_lead_view", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            write_report(champion, latest, previous, ids, tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after["index.html"] == before["index.html"] and after.keys() == before.keys()
    # Ids none of which is in the scoring (a wrong file) leave it as it was.
    assert write_report(champion, latest, previous, ["no-such-lead"], tmp_path) == ["no-such-lead"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == after
    # Other files in the folder are left alone; a half page a killed report left goes.
    (tmp_path / "notes.txt").write_text("mine")
    killed = tmp_path / f".{lead_href(hostile, True)}.{2**22 + 1}.partial"  # above Linux's largest pid
    killed.write_text("<html>")
    theirs = tmp_path / f".site.{2**22 + 1}.old"  # shaped alike, but no page of a report
    theirs.write_text("mine")
    for left in (killed, theirs):
        os.utime(left, (0, 0))
    write_report(champion, latest, previous, ids, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(list(tmp_path.glob("lead-*.html"))) == 3
    assert not killed.exists() and theirs.read_text() == "mine"


def test_the_model_page_of_a_model_without_time_windows_says_how_it_was_tested():
    """A flat CSV without a time column is split at random: no windows, no "later leads"."""
    from serving.pages import render

    flat = {"name": "x", "version": "3", "alias": "champion", "trained_at": "2026-12-05 09:00", "training_window": "",
            "validation_window": "", "test_window": "", "split": "stratified holdout (no timestamps): 1848 test rows",
            "metrics": [], "grade_bands": [], "criteria": [], "flat": True, "tested_on": "test rows",
            "summary_chart": "<svg></svg>", "summary_leads": 12, "summary_sampled": False}  # fmt: skip
    page = render("model.html", title="Model", m=flat)
    assert "tested on rows it never saw (stratified holdout (no timestamps): 1848 test rows)" in page
    assert "later leads" not in page and "UTC on ·" not in page
    # Its words are a flat table's: test rows, no horizon, no CRM attributes.
    assert "On the test rows:" in page and "Test rows: of leads given" in page
    assert not any(crm in page for crm in ("test period", "Test period", "horizon", "industry"))


def test_each_lead_of_a_static_report_has_its_own_file_even_where_names_ignore_case():
    from serving.pages import lead_href

    ids = ["A/1", "A_1", "A?1", "L-dup", "L-DUP", "x" * 150, "x" * 150 + "y", "Zoë", "Zoe"]
    names = [lead_href(i, static=True) for i in ids]
    assert len({name.casefold() for name in names}) == len(ids)
    assert all(re.fullmatch(r"lead-[A-Za-z0-9_-]{1,60}-[0-9a-f]{12}\.html", name) for name in names)
    assert names[3].startswith("lead-L-dup-")  # still readable


def test_old_scorings_are_removed_per_model(tmp_path, monkeypatch):
    """Each model keeps its last KEEP scorings: another model's many runs do not push them out."""
    import serving.snapshots as snapshots

    monkeypatch.setattr(snapshots, "KEEP", 2)
    scored = pd.DataFrame({"lead_id": ["L1"], "score": [50.0]})
    leads = pd.DataFrame({"lead_id": ["L1"]})
    written = [
        snapshots.write_snapshot(scored, leads, leads.iloc[:0], {"model_name": model}, tmp_path)
        for model in ("crm", "crm", "flat", "flat", "flat", "crm")
    ]
    assert snapshots.list_snapshots(tmp_path, "crm") == [written[1], written[5]]  # the newest two
    assert snapshots.list_snapshots(tmp_path, "flat") == [written[3], written[4]]
    assert len(snapshots.list_snapshots(tmp_path)) == 4
    # Halves a killed run left are removed once old; one a run may be writing now is left alone.
    import os
    import time

    stale, fresh = tmp_path / ".20261201T000000000000Z.partial", tmp_path / ".20261207T000000000000Z.partial"
    for half in (stale, fresh):
        half.mkdir()
        (half / "scores.parquet").write_bytes(b"half")
    long_ago = time.time() - snapshots.ABANDONED_AFTER_SECONDS - 60
    os.utime(stale, (long_ago, long_ago))
    snapshots.write_snapshot(scored, leads, leads.iloc[:0], {"model_name": "crm"}, tmp_path)
    assert not stale.exists() and fresh.exists()


def test_the_latest_kept_moment_is_in_utc_and_never_after_it_was_written(tmp_path):
    """What `score` weighs a look back against: a scoring kept as of a future day (`--snapshot`)
    held every later run off the pages until that day."""
    from serving.snapshots import latest_as_of, write_snapshot

    scored, leads = pd.DataFrame({"lead_id": ["L1"], "score": [50.0]}), pd.DataFrame({"lead_id": ["L1"]})
    assert latest_as_of("crm", tmp_path) is None
    write_snapshot(scored, leads, leads.iloc[:0], {"model_name": "crm", "as_of": "2026-01-01T10:00:00+01:00"}, tmp_path)
    assert latest_as_of("crm", tmp_path) == pd.Timestamp("2026-01-01 09:00")
    write_snapshot(scored, leads, leads.iloc[:0], {"model_name": "crm", "as_of": "2099-01-01T00:00:00"}, tmp_path)
    assert latest_as_of("crm", tmp_path) <= pd.Timestamp.now(tz="UTC").tz_localize(None)
    assert latest_as_of("flat", tmp_path) is None  # another model's scorings are not its


def test_the_digest_says_when_the_served_model_has_no_kept_scoring(scores_dir, monkeypatch):
    from serving import pages

    monkeypatch.setenv("LEADSCORE_SCORES_DIR", str(scores_dir))
    monkeypatch.setattr(pages, "_served_name", "another-model")
    empty = pages.digest().body.decode()
    assert "No scoring by another-model has been kept yet" in empty and "data-stage=" not in empty
    assert "--model-name another-model" in empty
    monkeypatch.setattr(pages, "_served_name", CHAMPION_NAME)
    assert "data-stage=" in pages.digest().body.decode()


def test_a_deeply_nested_pasted_lead_and_a_slashed_id_get_pages_not_bare_errors(champion, monkeypatch):
    from starlette.testclient import TestClient

    from serving import pages

    monkeypatch.setattr(pages, "_current_model", lambda: champion)
    deep = '{"lead_id": "x", "created_at": "2026-09-01", "tech_stack": ' + "[" * 5000 + "]" * 5000 + "}"
    answer = TestClient(pages.app).post("/leads", data={"lead": deep})
    assert answer.status_code == 400 and "nested too deeply" in answer.text
    # An id with a slash (encoded in every link) reaches its page, here the "not found" one.
    slashed = TestClient(pages.app).get("/leads/a%2Fb")
    assert slashed.status_code == 404 and "Lead &#39;a/b&#39; is not in the latest kept scoring" in slashed.text


def test_pasted_json_in_the_shapes_a_user_has_at_hand(champion, monkeypatch):
    """A lead alone (scored now), a list of one, or a whole /score body (scored as of its as_of)."""
    from starlette.testclient import TestClient

    from serving import pages

    monkeypatch.setattr(pages, "_current_model", lambda: champion)
    client = TestClient(pages.app)
    lead = {"lead_id": "P1", "created_at": "2025-06-01",
            "activities": [{"occurred_at": "2025-12-01", "activity_type": "hologram_call"},
                           {"occurred_at": "2025-12-30", "activity_type": "demo_request"}]}  # fmt: skip
    alone = client.post("/leads", data={"lead": json.dumps(lead)})
    assert alone.status_code == 200 and "(pasted)" in alone.text and "scored as of 2025-12-20" not in alone.text
    body = client.post("/leads", data={"lead": json.dumps({"leads": [lead], "as_of": "2025-12-20"})})
    assert body.status_code == 200 and "scored as of 2025-12-20 00:00 UTC by" in body.text, body.text[-2000:]
    assert "scored now" not in body.text
    # The demo request after the moment is said, not silently gone; the unknown type is marked.
    assert "1 activity dated on or after 2025-12-20 00:00 not counted" in body.text
    assert "Hologram call *" in body.text and "Not one of the activity types the model knows" in body.text
    assert client.post("/leads", data={"lead": json.dumps([lead])}).status_code == 200
    two = client.post("/leads", data={"lead": json.dumps({"leads": [lead, lead]})})
    assert two.status_code == 400 and "Paste one lead: this holds 2" in two.text
    misspelt = client.post("/leads", data={"lead": json.dumps({"leads": [lead], "asof": "2025-12-20"})})
    assert misspelt.status_code == 400 and "&#39;asof&#39;: not a field of a &#39;leads&#39; body" in misspelt.text
    late = client.post("/leads", data={"lead": json.dumps({"leads": [lead], "as_of": "someday"})})
    assert late.status_code == 400 and "as_of: " in late.text
    scalar = client.post("/leads", data={"lead": "5"})
    assert scalar.status_code == 400 and "the lead: Input should be" in scalar.text
    blank_id = client.post("/leads", data={"lead": json.dumps({**lead, "lead_id": "\u200b"})})
    assert blank_id.status_code == 400 and "lead_id: should hold a visible character" in blank_id.text


def _cells(page: str) -> str:
    """The digest's leads table without the roles and labels its phone layout adds to each cell."""
    added = r' (?:role="(?:table|rowgroup|row|columnheader|cell)"|data-label="[^"]*"|class="(?:lead|reason)")'
    return re.sub(added, "", page)


def test_digest_pages_through_every_lead_and_says_when_filters_match_none(champion, small_crm_dir, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    from starlette.testclient import TestClient

    from serving import pages
    from serving.snapshots import latest_two

    leads, acts, _ = read_leads(small_crm_dir, None)
    scored = score_batch(champion, leads, acts, AS_OF).scored
    # An earlier scoring in which every lead was a D: each lead graded better now rose.
    folder = tmp_path / "scores"
    meta = {"as_of": AS_OF.isoformat(), "model_name": champion.name, "model_version": champion.version}
    earlier = {**meta, "as_of": (AS_OF - pd.Timedelta(days=7)).isoformat()}
    write_snapshot(scored.assign(grade="D", score=0.5, stage="nurture"), leads, acts, earlier, folder)
    # The best-scored lead opted out: it is listed after every lead a rep may work.
    best = scored["score"].idxmax()
    scored.loc[best, "stage"] = "disqualified"
    scored.loc[best, "stage_reason"] = "Marked do not contact"
    write_snapshot(scored, leads, acts, meta, folder)
    latest, _ = latest_two(folder, CHAMPION_NAME)
    monkeypatch.setenv("LEADSCORE_SCORES_DIR", str(folder))
    monkeypatch.setattr(pages, "_served_name", CHAMPION_NAME)
    monkeypatch.setattr(pages, "_current_model", lambda: champion)
    monkeypatch.setattr(pages, "DIGEST_ROWS", 3)
    monkeypatch.setattr(pages, "CHANGES_SHOWN", 2)
    client = TestClient(pages.app)
    total = len(latest.scores)
    first = client.get("/digest").text
    assert f"Leads 1-3 of {total:,} matching" in first and 'href="/ui/digest?page=2" rel="next"' in first
    second = client.get("/digest?page=2").text
    assert f"Leads 4-6 of {total:,}" in second and "<td>4</td>" in _cells(second) and 'rel="prev"' in second
    last_page = -(-total // 3)
    assert f"page {last_page} of {last_page}" in client.get("/digest?page=99999").text
    assert "Leads 1-3" in client.get("/digest?page=abc").text
    assert "Leads 1-3" in client.get("/digest?page=%C2%B2").text  # a superscript two: was a 500
    # More digits than int() reads (was a 500, then page 1) is past the last page too.
    assert f"page {last_page} of {last_page}" in client.get(f"/digest?page={'9' * 5000}").text
    assert "Leads 4-6" in client.get("/digest?page=0000000002").text  # zeros before it: still page 2
    assert "best first, disqualified leads last" in first
    best_id = scored.loc[best, "lead_id"]
    assert pages.lead_href(best_id) not in first.split('id="leads"')[1].split("</table>")[0]
    rank = int((latest.scores["stage"] != "disqualified").sum()) + 1  # first of the disqualified
    page_of_rank = _cells(client.get(f"/digest?page={-(-rank // 3)}").text)
    ranks = re.findall(r"<td>(\d+)</td><td><a href=\"([^\"]+)\"", page_of_rank)
    assert (str(rank), pages.lead_href(best_id)) in ranks
    # Its top reason is the rule that disqualified it, not the activity that scored it up.
    row_of_best = _cells(client.get(f"/digest?page={-(-rank // 3)}").text).split(pages.lead_href(best_id))[1]
    row_of_best = row_of_best.split("</tr>")[0]
    assert "<td>Marked do not contact</td>" in row_of_best
    # Finding a lead by part of its name or company, in any case, or by its id.
    named = latest.scores[latest.scores["company"].astype(str).str.len() > 3].iloc[0]
    found = client.get("/digest", params={"q": f" {named['company'][1:-1].upper()} "}).text
    assert pages.lead_href(named["lead_id"]) in found and f'value="{named["company"][1:-1].upper()}"' in found
    assert f"of {total:,} matching" not in found and "Clear the filters" in found
    by_id = client.get("/digest", params={"q": best_id}).text
    assert "1 matching lead (" in by_id and pages.lead_href(best_id) in by_id
    rose = int((latest.scores["grade"] != "D").sum())
    assert f"{rose:,} rose a grade, 0 fell; the 2 biggest moves each way are shown" in first
    assert first.count('class="pos"') == 2
    # "Recent activity level 12.9" as a top reason is said once under the table.
    tops = re.findall(r"<td>([^<]*)</td>\s*</tr>", _cells(first).split('id="leads"')[1].split("</table>")[0])
    levels = any(top.startswith("Recent activity level") for top in tops)
    assert levels == ('id="activity-level"' in first) and ("half as much every 14 days" in first) == levels, tops
    # Each move says the stage too: an SQL lead fallen to nurture is the one to look at.
    moves = first.split('id="changes"')[1].split("</table>")[0]
    stages = re.findall(r"</td><td>([^<]*)</td></tr>", moves)
    assert len(stages) == 2 and all(s == "nurture" or s.startswith("nurture → ") for s in stages), stages
    # This scoring is from 2025: reasons' "today" is then, and the page says so.
    assert re.search(r"This scoring is [\d,]+ days old", first)
    # A filter no lead matches (a former owner in a bookmark) is kept, said, and undone by a link.
    nobody = client.get("/digest?owner=Nobody&page=2").text
    assert "No lead matches these filters" in nobody and '<option value="Nobody" selected>' in nobody
    assert 'href="/ui/digest">show all' in nobody and "0 rose a grade" in nobody
    # Sorted by fit or engagement: each page in that order, the disqualified still last, the order
    # kept by the page links and by clearing the filters; an unknown order is the score's.
    workable = latest.scores[latest.scores["stage"] != "disqualified"]
    for key, words in (("fit", "best fit first"), ("engagement", "most engaged first")):
        text = client.get(f"/digest?sort={key.upper()}&page=2").text
        expected = workable.sort_values(key, ascending=False, kind="stable")[key].iloc[3:6].round().tolist()
        table = _cells(text).split('id="leads"')[1].split("</table>")[0]
        column = 5 if key == "fit" else 6
        shown = [float(r[column - 1]) for r in re.findall(r"<tr data-[^>]*>" + r"\s*<td>(.*?)</td>" * 7, table, re.S)]
        assert shown == expected, (key, shown, expected)
        assert f"of {total:,} matching, {words}, disqualified leads last" in text
        assert f'href="/ui/digest?sort={key}&amp;page=3" rel="next"' in text, text.split('class="pager"')[1][:300]
        assert f'<option value="{key}" selected>{words}</option>' in text
        filtered = client.get(f"/digest?sort={key}&stage=nurture").text
        assert f'href="/ui/digest?sort={key}">Clear the filters' in filtered
    assert "best first, disqualified" in client.get("/digest?sort=whatever").text
    # The id box works without script; spaces around a pasted id are dropped.
    opened = client.get("/leads", params={"lead": " L 1/2 "}, follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/ui/leads/L%201%2F2"
    # A name in the box opens its lead; part of an id in a link (a lead not scored yet) opens none.
    name = f"{named['first_name']} {named['last_name']}"
    if (latest.scores["first_name"] + " " + latest.scores["last_name"]).str.contains(name, regex=False).sum() == 1:
        by_name = client.get("/leads", params={"lead": name.lower()}, follow_redirects=False)
        assert by_name.headers["location"] == pages.lead_href(named["lead_id"]), by_name.headers
    as_listed = client.get("/leads", params={"lead": pages._display_name(named).upper()}, follow_redirects=False)
    assert as_listed.headers["location"] == pages.lead_href(named["lead_id"]), as_listed.headers  # "Name (Company)"
    assert client.get("/digest/", follow_redirects=False).headers["location"] == "/ui/digest"
    assert "Open a lead" in client.get("/leads/").text
    partial = client.get(pages.lead_href(best_id[:-1]).removeprefix("/ui"), follow_redirects=False)
    assert partial.status_code == 404 and "is not in the latest kept scoring" in partial.text
    # `.` and `..` are "here" and "up" in a path, however encoded: such ids are opened by the query.
    assert pages.lead_href("..") == "/ui/leads?lead=.."
    dots = client.get("/leads", params={"lead": ".."}, follow_redirects=False)
    assert dots.status_code == 404 and "Lead &#39;..&#39; is not in the latest kept scoring" in dots.text
    # The lead page scores with the live model; when the scoring was another version's, it says so.
    page_of_best = pages.lead_href(best_id).removeprefix("/ui")
    assert 'id="kept-differs"' not in client.get(page_of_best).text
    write_snapshot(scored, leads, acts, {**meta, "model_version": "0"}, folder)
    older = client.get(page_of_best).text
    kept_score = float(scored.loc[best, "score"])
    # With its stage, which differs after criteria or a rollback even when the score does not.
    kept_grade, kept_stage = scored.loc[best, "grade"], scored.loc[best, "stage"]
    assert f"by {CHAMPION_NAME} v0 gave it ({kept_score:.1f}, grade {kept_grade}, {kept_stage})" in older
    assert f"now {CHAMPION_NAME} v{champion.version}, which this page uses" in older
    # The digest says its grade moves came with a change of model, and whose grade table it shows;
    # a report written to send (no service) says on each lead page what the digest says.
    assert 'id="model-changed"' not in first and "were graded by" not in first
    changed = client.get("/digest").text
    assert f"The scoring before was by {CHAMPION_NAME} v{champion.version}, this one by {CHAMPION_NAME} v0" in changed
    # The two as of the same moment are told apart by when the earlier one was run.
    assert re.search(r"Against the scoring as of [\d-]+ [\d:]+ run \d{4}-\d\d-\d\d \d\d:\d\d UTC \(the same", changed)
    assert f"The leads above were graded by {CHAMPION_NAME} v0" in changed
    report = tmp_path / "report"
    pages.write_report(champion, *latest_two(folder, CHAMPION_NAME), [best_id], report)
    sent = (report / pages.lead_href(best_id, static=True)).read_text()
    assert f"by {CHAMPION_NAME} v0 gave it ({kept_score:.1f}" in sent and 'id="kept-differs"' in sent
    monkeypatch.setattr(pages, "_current_model", lambda: None)
    for path in ("/model", "/leads/x"):
        answer = client.get(path)
        assert answer.status_code == 503 and "No model loaded yet" in answer.text and "/readyz" not in answer.text
    assert "No model is loaded in the service yet" in client.get("/digest").text
    # A lead of the kept scoring still opens, as that scoring gave it; the model's parts say they wait.
    kept = client.get(page_of_best)
    row = latest.scores.set_index("lead_id").loc[best_id]
    assert kept.status_code == 200 and 'id="kept-only"' in kept.text and "From a typical lead" not in kept.text
    assert f'id="score">{row["score"]:.1f}<' in kept.text and '<strong id="stage">disqualified</strong>' in kept.text
    assert all(html.escape(r["text"]) in kept.text for r in row["reasons"]) and len(row["reasons"]) > 0


def test_grade_shares_are_whole_percents_that_add_up_to_100():
    from serving.pages import whole_percents

    quarters = whole_percents([0.125, 0.125, 0.125, 0.625])  # rounded one by one: 13 + 13 + 13 + 63 = 102
    assert sum(quarters) == 100 and all(p in (12, 13) for p in quarters[:3]) and quarters[3] in (62, 63)
    assert sum(whole_percents([0.3334, 0.3333, 0.3333])) == 100
    assert whole_percents([0.2, 0.8]) == [20, 80] and whole_percents([]) == [] and whole_percents([0.0]) == [0]


def test_a_snapshot_names_each_lead_by_its_id_without_spaces_around_it(tmp_path):
    """A lead id padded in the leads file was scored, listed in the digest with no owner, and
    its page was a 404: the snapshot kept its row and activities under the padded id only in part."""
    from serving.snapshots import write_snapshot

    scored = pd.DataFrame({"lead_id": [" L1 "], "score": [50.0]})
    leads = pd.DataFrame({"lead_id": [" L1 "], "owner": ["Ada"]})
    acts = pd.DataFrame({"lead_id": ["L1\u00a0"], "activity_type": ["web_visit"]})
    folder = write_snapshot(scored, leads, acts, {"model_name": "crm"}, tmp_path)
    for table in ("scores", "leads", "activities"):
        assert pd.read_parquet(folder / f"{table}.parquet")["lead_id"].tolist() == ["L1"], table
    assert pd.read_parquet(folder / "scores.parquet")["owner"].tolist() == ["Ada"]


def test_the_find_box_ignores_case_and_accents():
    from serving.pages import _matches

    scores = pd.DataFrame({"lead_id": ["L1", "L2", "L3"], "last_name": ["Müller", "Muller", "Zoë"],
                           "company": ["Straße AG", None, "ÅSA"]})  # fmt: skip
    assert _matches(scores, "muller").tolist() == [True, True, False]
    assert _matches(scores, "MÜLLER").tolist() == [True, True, False]
    assert _matches(scores, "zoe asa").tolist() == [False, False, True]


def test_a_lead_the_profile_rule_rules_out_but_the_model_ranks_high_says_so():
    """A rep saw "fit 82" next to "meets 0% of the ideal-customer criteria" with no word on it."""
    from serving.pages import render

    lead = {"display_name": "x", "lead_id": "x", "as_of": "2026-10-22 00:00", "model": "m v1", "score": 47.1,
            "grade": "B", "probability": 0.47, "fit": 82.0, "engagement": 60.0, "stage": "disqualified",
            "stage_reason": "Outside the ideal customer profile: meets 0% of its criteria (needs 20%)",
            "next_action": "Do not work now; recycle on 2027-01-27", "reasons": [], "kept_only": True}  # fmt: skip
    assert "the ideal-customer criteria rule it out" in render("lead.html", title="x", lead=lead)
    assert 'id="icp-disagrees"' not in render("lead.html", title="x", lead={**lead, "fit": 35.0})
    opted_out = {**lead, "stage_reason": "Marked do not contact"}
    assert 'id="icp-disagrees"' not in render("lead.html", title="x", lead=opted_out)


def test_the_model_page_lists_only_the_mql_conditions_the_criteria_set(params):
    """A flat model qualifies on its score alone: no "fit ≥ None" on its model page."""
    from types import SimpleNamespace

    from features.criteria import reachable_stages
    from serving.pages import FLAT_UNREACHED, _criteria_rows

    update = {"min_score": 71.3, "min_fit": None, "min_engagement": None, "hand_raise_qualifies": False}
    flat_criteria = params.criteria.model_copy(update={"mql": params.criteria.mql.model_copy(update=update)})
    flat = SimpleNamespace(criteria=flat_criteria, kind="flat", stages=reachable_stages("flat", flat_criteria))
    crm = SimpleNamespace(criteria=params.criteria, kind="crm", feature_params=params.features)
    assert _criteria_rows(flat) == [
        ("MQL", "score ≥ 71.3"),
        ("SQL, disqualified", FLAT_UNREACHED),
        ("Next actions", "MQL: Sales development: first call within 3 days; nurture: Keep in the nurture campaign"),
    ]
    # An SQL rule that asks for neither a hand-raise nor BANT is reached by score alone: said so.
    by_score = {"min_score": 80.0, "require_hand_raise": False, "min_bant_confirmed": 0}
    sql = params.criteria.sql.model_copy(update=by_score)
    flat.criteria = flat_criteria.model_copy(update={"sql": sql})
    flat.stages = reachable_stages("flat", flat.criteria)
    assert _criteria_rows(flat)[1:3] == [
        ("SQL", "score ≥ 80"),
        ("Disqualified", FLAT_UNREACHED),
    ]
    assert _criteria_rows(flat)[3][1].startswith("SQL: Call within one business day; MQL: Sales development")
    rows = dict(_criteria_rows(crm))
    # An admin reads every rule in force: ranks said as ranks, the hand-raise types on the MQL line
    # too, the competitors, the profile the ICP match counts and each stage's action.
    assert rows["MQL"].startswith("score ≥ 10, fit rank ≥ 40, engagement rank ≥ 50; or a hand-raise (demo request, ")
    assert "(hubspot.com, salesforce.com, marketo.com)" in rows["Disqualified"]
    assert rows["Ideal customer profile"].startswith("industry Software, Financial Services, Healthcare; 50-5,000 emp")
    assert "SQL: Call within one business day" in rows["Next actions"]
    assert "Disqualified, off profile: Do not work now; recycle on [recycle date]" in rows["Next actions"]


@pytest.fixture
def two_origins(tmp_path):
    """Two web origins on loopback, each serving an empty page: a CRM's and a stranger's."""
    import functools
    import http.server
    import threading

    (tmp_path / "index.html").write_text("<!doctype html><title>CRM</title><p>CRM</p>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [f"http://127.0.0.1:{server.server_address[1]}" for server in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


CROSS_ORIGIN_CALL = """async ([url, key]) => {
    try {
        const answer = await fetch(url + "/model", {headers: {Authorization: "Bearer " + key}});
        return {status: answer.status, name: (await answer.json()).name,
                requestId: answer.headers.get("x-bentoml-request-id")};
    } catch (error) { return {blocked: String(error)}; }
}"""


def test_a_crm_page_on_an_allowed_origin_calls_the_api_from_the_browser(
    browser, champion_store, params_file, two_origins, tmp_path
):
    """`service.cors_origins`: the browser lets the CRM's page read the API's answers (its
    preflight needs no key) and blocks any other origin's; without the setting, every origin's."""
    crm, stranger = two_origins
    cors = params_file("cors.yaml", **{"service.cors_origins": [crm]})
    process, url, _ = _start(champion_store, KEY, log_dir=tmp_path, env_extra={"LEADSCORE_PARAMS": str(cors)})
    try:
        preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
        allowed = httpx.options(f"{url}/model", headers={"Origin": crm, **preflight})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == crm
        refused = httpx.options(f"{url}/model", headers={"Origin": stranger, **preflight})
        assert "access-control-allow-origin" not in refused.headers
        # Still a key for the call itself; its refusal readable by the CRM's page.
        unkeyed = httpx.get(f"{url}/model", headers={"Origin": crm})
        assert unkeyed.status_code == 401 and unkeyed.headers["access-control-allow-origin"] == crm

        tab = browser.new_page()
        tab.goto(crm)
        answer = tab.evaluate(CROSS_ORIGIN_CALL, [url, KEY])
        assert answer["status"] == 200 and answer["name"] == CHAMPION_NAME and answer["requestId"], answer
        tab.goto(stranger)
        assert "blocked" in tab.evaluate(CROSS_ORIGIN_CALL, [url, KEY])
        tab.close()
    finally:
        _stop(process)
    process, url, _ = _start(champion_store, KEY, log_dir=tmp_path)  # the default: no origin
    try:
        tab = browser.new_page()
        tab.goto(crm)
        assert "blocked" in tab.evaluate(CROSS_ORIGIN_CALL, [url, KEY])
        tab.close()
    finally:
        _stop(process)


def test_pages_of_leads_without_owners_or_activities_leave_those_parts_out(champion, scores_dir):
    """A flat export (no owner column, no activities) showed an empty owner column and filter,
    and "Activity timeline: No activity recorded" on every lead page. And a digest after a
    rollback said the champion had changed only in a footnote."""
    import dataclasses

    from serving.pages import digest_view, lead_href, render
    from serving.snapshots import latest_two

    latest, _ = latest_two(scores_dir, champion.name)
    with_owners = render("digest.html", **digest_view(champion, latest, None, {}))
    assert '<th scope="col">owner</th>' in _cells(with_owners) and 'name="owner"' in with_owners
    # Owners differing only in case are two: each is listed by its own spelling, another case finds one.
    cased = dataclasses.replace(latest, scores=latest.scores.assign(
        owner=["Ann" if i % 2 else "ANN" for i in range(len(latest.scores))]))  # fmt: skip
    listed = {asked: {row["owner"] for row in digest_view(champion, cased, None, {"owner": asked})["rows"]}
              for asked in ("Ann", "ANN", "ann")}  # fmt: skip
    assert listed["Ann"] == {"Ann"} and listed["ANN"] == {"ANN"} and len(listed["ann"]) == 1, listed
    unowned = dataclasses.replace(latest, scores=latest.scores.assign(owner=""))
    without = render("digest.html", **digest_view(champion, unowned, None, {}))
    assert '<th scope="col">owner</th>' not in _cells(without) and 'name="owner"' not in without
    assert '<th scope="col">top reason</th>' in _cells(without)
    # A lead with nothing for it had an empty top reason: what holds it down most is shown.
    held = latest.scores.index[latest.scores["stage"] != "disqualified"][0]
    downs = [{"feature": "a", "value": 0.0, "points": -1.5, "text": "No demo request yet: -1.5"},
             {"feature": "b", "value": 0.0, "points": -0.4, "text": "No webinar attended yet: -0.4"}]  # fmt: skip
    lowered = latest.scores.copy()
    lowered.at[held, "reasons"] = downs
    held_id = lowered.at[held, "lead_id"]
    held_view = digest_view(champion, dataclasses.replace(latest, scores=lowered), None, {"q": held_id})
    href = lead_href(held_id)
    assert [row["top_reason"] for row in held_view["rows"] if row["href"] == href] == ["No demo request yet: -1.5"]
    # A scoring by a version the service no longer serves (after a rollback) says so at the top.
    assert 'id="champion-changed"' not in with_owners
    older = dataclasses.replace(latest, meta={**latest.meta, "model_version": "99"})
    notice = render("digest.html", **digest_view(champion, older, None, {}))
    assert f"The service now scores with {champion.name} v{champion.version}, not {champion.name} v99" in notice
    lead = {"display_name": "x", "lead_id": "x", "as_of": "2026-10-22 00:00", "model": "m v1", "score": 47.1,
            "grade": "B", "probability": 0.47, "fit": 50.0, "engagement": 60.0, "stage": "MQL", "stage_reason": "",
            "next_action": "", "reasons": [], "kept_only": True, "timeline": []}  # fmt: skip
    assert "Activity timeline" in render("lead.html", title="x", lead=lead)
    flat_lead = render("lead.html", title="x", lead={**lead, "reads_activities": False})
    assert "Activity timeline" not in flat_lead and "what its activity adds" not in flat_lead
    assert "engagement: its behaviour columns" in flat_lead
    # A flat model's test rows are a holdout: no test period, no empty brackets for its window.
    flat_digest = render("digest.html", **{**digest_view(champion, latest, None, {}), "test_window": ""})
    assert "Conversion on the held-out test rows of" in flat_digest and " (), by grade" not in flat_digest
    assert "attributes and activities" not in render("pick.html", title="Open a lead", lead_choices=[], flat_model=True)


def test_the_lead_page_gives_a_rep_the_contact_details_and_the_crm_record(
    champion, scores_dir, params_file, monkeypatch
):
    """The page said "Call within one business day" and showed no phone, e-mail or profile."""
    from serving.pages import render, scored_lead_view
    from serving.snapshots import latest_two

    latest, _ = latest_two(scores_dir, champion.name)
    lead_id = latest.scores["lead_id"].iloc[3]
    rows, acts = latest.lead(lead_id)
    rows = rows.assign(
        phone="+1 (555) 673-1011",
        email="jane.o'neil@acme.com",
        employees="800",
        annual_revenue="285128999",
        tech_stack="Salesforce;AWS|Slack",
    )
    url = "https://acme.lightning.force.com/lightning/r/Lead/{lead_id}/view"
    monkeypatch.setenv("LEADSCORE_PARAMS", str(params_file("crm-link.yaml", **{"service.crm_lead_url": url})))
    page = render("lead.html", title="x", lead=scored_lead_view(champion, latest, rows, acts))
    assert '<a href="tel:+15556731011">+1 (555) 673-1011</a>' in page
    assert '<a href="mailto:jane.o%27neil@acme.com">jane.o&#39;neil@acme.com</a>' in page
    assert "<dt>Employees</dt><dd>800</dd>" in page and "<dd>285,128,999</dd>" in page
    assert "<dd>Salesforce, AWS, Slack</dd>" in page
    assert f'href="https://acme.lightning.force.com/lightning/r/Lead/{lead_id}/view"' in page
    monkeypatch.delenv("LEADSCORE_PARAMS")
    blank = rows.assign(phone="", email=None, industry="nan")
    plain = render("lead.html", title="x", lead=scored_lead_view(champion, latest, blank, acts))
    assert 'id="crm-link"' not in plain and "<dt>Phone</dt>" not in plain and "<dt>Industry</dt>" not in plain
    # A placeholder is blank here as in scoring ("Industry N/A" sat beside advice saying "industry
    # blank"); an opted-out lead's e-mail and phone are no one-click links under "Do not contact".
    opted_out = rows.assign(industry="N/A", seniority=" - ", do_not_contact="Yes")
    page = render("lead.html", title="x", lead=scored_lead_view(champion, latest, opted_out, acts))
    assert "<dt>Industry</dt>" not in page and "<dt>Seniority</dt>" not in page
    assert "mailto:" not in page and "tel:" not in page
    assert "<dd>+1 (555) 673-1011 (opted out: do not contact)</dd>" in page


def test_a_scoring_under_new_rules_on_the_same_model_says_its_scores_did_not_move_with_it(champion, scores_dir):
    """After `criteria --apply` and a scoring, the digest said "grades and scores moved with the
    model": the model was the one before, under other rules."""
    import copy
    import dataclasses

    from serving.pages import digest_view, render
    from serving.snapshots import latest_two

    latest, _ = latest_two(scores_dir, champion.name)
    latest = dataclasses.replace(latest, meta={**latest.meta, "model_version": str(champion.version)})
    week = pd.Timedelta(days=7)
    before = dataclasses.replace(latest, meta={**latest.meta, "model_version": "99",
                                               "as_of": (latest.as_of - week).isoformat()})  # fmt: skip
    scorer = copy.copy(champion.scorer)
    scorer.metadata = {**champion.scorer.metadata, "rules": {"from_version": "99"}}
    ruled = dataclasses.replace(champion, scorer=scorer)
    said = render("digest.html", **digest_view(ruled, latest, before, {}))
    assert 'id="rules-changed"' in said and 'id="model-changed"' not in said
    assert "the same model under new rules (qualification criteria and grade bands)" in said
    # Another model before: the scores moved with it.
    other = render("digest.html", **digest_view(champion, latest, before, {}))
    assert 'id="model-changed"' in other and 'id="rules-changed"' not in other


def test_without_keys_there_is_no_sign_in(monkeypatch):
    """The sign-in form showed, took any key, and "Sign out" led to "Signed out · Sign in"."""
    from fastapi.testclient import TestClient

    from serving import pages

    monkeypatch.delenv("LEADSCORE_API_KEYS", raising=False)
    client = TestClient(pages.app, follow_redirects=False)
    for path in ("/login", "/login?next=/ui/model", "/login?signed_out=1"):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/"), path
    assert client.get("/login?next=/ui/model").headers["location"] == "/ui/model"
    monkeypatch.setenv("LEADSCORE_API_KEYS", "k1")
    assert client.get("/login").status_code == 200


def test_the_model_page_says_bant_answers_as_the_lead_reasons_do():
    """ "Need: confirmed raises it most ..., not lowers it most" read as a slip."""
    from serving.pages import _category_effect, _level_words

    levels = _level_words("need", pd.Series(["not"] * 6 + ["confirmed"] * 6))
    assert levels.tolist() == ["not there"] * 6 + ["confirmed"] * 6
    said = _category_effect(levels, np.array([-2.0] * 6 + [3.0] * 6))
    assert said == "confirmed +3.0 points on average, not there -2.0"
    assert _level_words("industry", pd.Series(["Retail"])).tolist() == ["Retail"]


def test_signing_in_from_a_sign_out_link_does_not_sign_out_again():
    """A "Sign out" link opened without a cookie asks for a key with next=/ui/logout; signing in
    then went to the sign-out and cleared the cookie it had just set."""
    from serving.pages import _local

    for target in ("/ui/logout", "/ui/logout/", "/ui/logout?x=1"):
        assert _local(target) == "/ui/digest", target
    assert _local("/ui/leads/L1?as_of=2025") == "/ui/leads/L1?as_of=2025"
    assert _local("//evil.example/ui/") == _local("https://evil.example") == "/ui/digest"


def test_a_chart_carries_no_date():
    """Each SVG held the machine's local time without an offset (a report sent from Honolulu said
    22:29 of the evening before)."""
    from serving.charts import horizontal_bars

    drawn = horizontal_bars(["Industry", "Country"], [1.5, 0.5], "mean absolute effect (score points)")
    assert "<svg" in drawn and "<dc:date>" not in drawn


def test_a_waterfall_step_of_a_technology_says_whether_the_lead_uses_it(champion, scores_dir):
    """Steps and "other factors" read "Uses Salesforce: -0.7" of a lead whose stack was AWS and
    Slack (68 of 97 such labels on 32 pages); its reasons said "Does not use"."""
    from features.reasons import value_name
    from serving.pages import scored_lead_view
    from serving.snapshots import latest_two

    assert value_name("uses_salesforce", 0.0) == "Does not use Salesforce"
    assert value_name("uses_salesforce", 1.0) == "Uses Salesforce"
    assert value_name("uses_salesforce", float("nan")) == "Tech stack unknown (Salesforce)"
    assert value_name("icp_match", 0.5) == "Match with the ideal customer profile"
    latest, _ = latest_two(scores_dir, champion.name)
    labels = []
    for lead_id in latest.scores["lead_id"].head(10):
        rows, acts = latest.lead(lead_id)
        view = scored_lead_view(champion, latest, rows.assign(tech_stack="Zoho"), acts)  # none the model knows
        labels += [row["label"] for row in view["waterfall_rows"]] + view["other_factors"]
    technologies = [label for label in labels if "use" in label.casefold()]
    assert technologies and all(label.startswith("Does not use") for label in technologies), technologies
    # Spelt as the training export writes them (AWS, HubSpot), on the pages and in the reasons.
    from features.synthetic import TECHNOLOGIES

    spelt = set(champion.tech_names.values())
    flags = [c for c in champion.scorer.spec.columns if c.startswith("uses_")]
    assert flags and set(champion.tech_names) == set(flags) and spelt <= set(TECHNOLOGIES), champion.tech_names
    named = [label.removeprefix("Does not use ").partition(":")[0] for label in technologies]
    assert set(named) <= spelt, named
    # Each technology as a lead's only factor (the small champion's own reasons may name none), and
    # whichever the scoring's reasons name.
    import numpy as np

    from serving.scoring import _reasons

    made = _reasons(np.eye(len(flags)), {flag: [1.0] * len(flags) for flag in flags}, flags, names=champion.tech_names)
    reasons = [r["text"] for rs in made for r in rs if r["feature"].startswith("uses_")]
    assert len(reasons) == len(flags), made
    reasons += [r["text"] for rs in latest.scores["reasons"] for r in rs if r["feature"].startswith("uses_")]
    assert all(any(name in text for name in spelt) for text in reasons), reasons[:5]
    title_cased = {name.title() for name in spelt if name.title() != name}  # "Aws", "Hubspot", "Sap"
    assert title_cased and not [t for t in reasons + labels if any(wrong in t for wrong in title_cased)]


def test_a_reason_and_its_waterfall_step_say_the_same_points(champion, scores_dir):
    """The reasons write the points they send (two places) to one place, the chart wrote the
    unrounded ones: -0.85 read "-0.8" in a reason and "-0.9" in the chart beside it."""
    from serving.pages import scored_lead_view
    from serving.snapshots import latest_two

    latest, _ = latest_two(scores_dir, champion.name)
    compared = 0
    for lead_id in latest.scores["lead_id"].head(40):
        rows, acts = latest.lead(lead_id)
        view = scored_lead_view(champion, latest, rows, acts)
        shown = [row["value"] for row in view["waterfall_rows"][1:-2]] + [
            other.rpartition(": ")[2] for other in view["other_factors"]
        ]
        for reason in view["reasons"]:
            if abs(reason["points"]) < 0.95:  # written to one place; larger ones as whole points
                compared += 1
                said = reason["text"].rpartition(": ")[2]
                assert said == f"{reason['points']:+.1f}" and said in shown, (reason, shown)
    assert compared > 50


def test_the_waterfall_caption_says_only_what_holds_of_the_model(champion, scores_dir):
    """It said the reasons leave out an activity factor above the training average of every model;
    one trained before the averages were kept shows such a reason, and a flat model has no
    activity factors."""
    from serving.pages import render, scored_lead_view
    from serving.snapshots import latest_two

    latest, _ = latest_two(scores_dir, champion.name)
    rows, acts = latest.lead(latest.scores["lead_id"].iloc[0])
    view = scored_lead_view(champion, latest, rows, acts)
    leaves_out, shares = "(the reasons above leave such a factor out)", "the activity factors share the credit"
    assert view["activity_factors"] and view["weighs_activity"]
    page = render("lead.html", static=True, title="x", lead=view)
    assert shares in page and leaves_out in page
    page = render("lead.html", static=True, title="x", lead={**view, "weighs_activity": False})  # a model from before
    assert shares in page and leaves_out not in page
    page = render("lead.html", static=True, title="x", lead={**view, "activity_factors": False})  # a flat model
    assert shares not in page and leaves_out not in page and "a typical lead's value of it." in page
