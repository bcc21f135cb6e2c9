"""The dashboard at ``/``: one server-rendered page of what the stand-in received.

Plain f-strings, no front-end build. Every value shown came from a client and may be
hostile (``</script><script>...``), so everything goes through ``esc`` and the page
carries no script at all; it refreshes itself with a meta tag.
"""

from __future__ import annotations

import datetime
import html
import json
from collections.abc import Iterable, Mapping
from typing import Any

from px_middleware.tools.devserver.schema import DATE_FIELDS, Record
from px_middleware.tools.devserver.store import Store, StoredEvent

PAGE_VIEW_EVENTS = frozenset({"page_view", "pageView", "pageview"})
_MAX_SESSIONS = 12
_MAX_ROWS = 25

_CSS = """
:root{--fg:#1d2433;--muted:#6b7280;--line:#e5e7eb;--bg:#f5f6fa;--accent:#4f46e5}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
header{background:#111827;color:#f9fafb;padding:14px 24px;display:flex;flex-wrap:wrap;
align-items:baseline;gap:8px 24px}
header h1{font-size:18px;margin:0}
header .meta{color:#9ca3af;font-size:12px}
.counts{display:flex;gap:18px;margin-left:auto;font-size:12px;color:#d1d5db}
.counts b{font-size:16px;color:#fff;margin-right:4px}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:16px;
padding:16px 24px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 16px;
overflow:auto;min-width:0}
section.wide{grid-column:1/-1}
h2{font-size:12px;margin:0 0 10px;text-transform:uppercase;letter-spacing:.06em;
color:var(--muted)}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-top:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:12px;border-top:0}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;
word-break:break-all}
.attr{display:inline-block;background:#f3f4f6;border-radius:6px;padding:1px 6px;
margin:1px 2px;font-size:12px}
.attr b{font-weight:600;color:#374151}
.ms,.muted{color:var(--muted)}
td.time{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;
color:var(--muted);white-space:nowrap}
.summary{font-size:12px;color:var(--muted)}
.ok{color:#059669;font-weight:700}.bad{color:#dc2626;font-weight:700}
.status{display:inline-block;border-radius:999px;padding:0 8px;font-size:12px;font-weight:600}
.s2{background:#d1fae5;color:#065f46}.s4{background:#fef3c7;color:#92400e}
.s5,.sx{background:#fee2e2;color:#991b1b}
.session{border-top:1px solid var(--line);padding:8px 0}
.session:first-of-type{border-top:0}
.timeline{position:relative;height:14px;background:#eef2ff;border-radius:7px;margin:6px 0}
.timeline span{position:absolute;top:3px;width:8px;height:8px;margin-left:-4px;
border-radius:50%;background:var(--accent)}
.views{margin:0;padding-left:18px;font-size:12px}
.empty{color:var(--muted);font-style:italic}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def iso(ms: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "invalid date"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _clock(ms: int) -> str:
    return iso(ms)[11:19]


def _value(field: str, value: Any) -> str:
    if field in DATE_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return f'<time>{esc(iso(value))}</time> <span class="ms">({esc(value)})</span>'
    if isinstance(value, str):
        return esc(value)
    return f'<span class="mono">{esc(json.dumps(value))}</span>'


def _attributes(record: Mapping[str, Any], skip: str) -> str:
    chips: list[str] = []
    for field, value in record.items():
        if field == skip:
            continue
        if field == "customAttributes" and isinstance(value, dict):
            chips.extend(
                f'<span class="attr"><b>{esc(name)}</b> {_value(name, item)}</span>'
                for name, item in value.items()
            )
        else:
            chips.append(f'<span class="attr"><b>{esc(field)}</b> {_value(field, value)}</span>')
    return "".join(chips) or '<span class="muted">no attributes</span>'


def _table(headers: Iterable[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(header)}</th>" for header in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _records(records: list[Record], key: str, empty: str) -> str:
    rows = [
        f"<tr><td><code>{esc(record.get(key, ''))}</code></td>"
        f"<td>{_attributes(record, key)}</td></tr>"
        for record in reversed(records[-_MAX_ROWS:])
    ]
    return _table((key, "attributes"), rows, empty)


def _event_time(stored: StoredEvent) -> int:
    date = stored.event.get("date")
    return date if isinstance(date, int) and not isinstance(date, bool) else stored.received_ms


def _page_label(event: Record) -> str:
    attributes = event.get("attributes")
    path = attributes.get("path") if isinstance(attributes, dict) else None
    return str(path or event.get("url") or "?")


def _duration(ms: int) -> str:
    seconds = max(0, ms // 1000)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _sessions(events: list[StoredEvent]) -> str:
    sessions: dict[str, list[StoredEvent]] = {}
    for stored in events:
        session_id = stored.event.get("sessionId")
        if isinstance(session_id, str):
            sessions.setdefault(session_id, []).append(stored)
    if not sessions:
        return '<p class="empty">No sessions yet: custom events carry a sessionId.</p>'
    ordered = sorted(sessions.items(), key=lambda item: -max(map(_event_time, item[1])))
    blocks = []
    for session_id, items in ordered[:_MAX_SESSIONS]:
        items = sorted(items, key=_event_time)
        start, end = _event_time(items[0]), _event_time(items[-1])
        span = max(end - start, 1)
        views = [s for s in items if s.event.get("eventName") in PAGE_VIEW_EVENTS]
        dots = "".join(
            f'<span style="left:{2 + (_event_time(s) - start) * 96 / span:.1f}%" '
            f'title="{esc(_clock(_event_time(s)))} {esc(_page_label(s.event))}"></span>'
            for s in views
        )
        listed = "".join(
            f'<li><span class="ms">{esc(_clock(_event_time(s)))}</span> '
            f"<code>{esc(_page_label(s.event))}</code></li>"
            for s in views[-8:]
        )
        first = items[0].event
        blocks.append(
            f'<div class="session"><code>{esc(session_id)}</code> '
            f'<span class="muted">user</span> <code>{esc(first.get("identifyId", ""))}</code> '
            f'<span class="muted">account</span> <code>{esc(first.get("accountId") or "-")}</code>'
            f'<div class="summary">{esc(iso(start))} · {esc(_duration(end - start))} · '
            f"{len(items)} events · {len(views)} page views</div>"
            f'<div class="timeline">{dots}</div><ul class="views">{listed}</ul></div>'
        )
    return "".join(blocks)


def _latest_events(events: list[StoredEvent]) -> str:
    rows = [
        f'<tr><td class="time">{esc(_clock(_event_time(s)))}</td>'
        f"<td><code>{esc(s.event.get('eventName', ''))}</code></td>"
        f"<td><code>{esc(s.event.get('identifyId', ''))}</code></td>"
        f"<td><code>{esc(s.event.get('eventId') or '-')}</code></td></tr>"
        for s in reversed(events[-_MAX_ROWS:])
    ]
    return _table(("time", "event", "identifyId", "eventId"), rows, "No custom events yet.")


def _identifies(calls: list[dict[str, Any]]) -> str:
    rows = []
    for call in reversed(calls[-_MAX_ROWS:]):
        args = call["args"]
        user = args[0] if args and isinstance(args[0], dict) else {}
        account = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
        valid = call["hash_valid"]
        mark = (
            '<span class="ok" title="userHash valid">✓</span>'
            if valid
            else '<span class="bad" title="userHash invalid">✗</span>'
            if valid is False
            else '<span class="muted" title="no userHash">&ndash;</span>'
        )
        rows.append(
            f'<tr><td class="time">{esc(_clock(call["ts"]))}</td><td>{mark}</td>'
            f"<td><code>{esc(user.get('id', ''))}</code></td>"
            f"<td><code>{esc(account.get('id', '-'))}</code></td>"
            f"<td><code>{esc(call['product_key'] or '')}</code></td>"
            f"<td><code>{esc(call['url'] or '')}</code></td></tr>"
        )
    return _table(
        ("time", "hash", "user", "account", "product key", "page"),
        rows,
        "No identify calls yet: load a page that carries the loader.",
    )


def _requests(requests: list[dict[str, Any]]) -> str:
    rows = []
    for request in reversed(requests):
        status = request["status"]
        badge = f"s{str(status)[0]}" if status else "sx"
        target = request["path"] + (f"?{request['query']}" if request["query"] else "")
        rows.append(
            f'<tr><td class="time">{esc(_clock(request["ts"]))}</td>'
            f"<td>{esc(request['method'])}</td><td><code>{esc(target)}</code></td>"
            f'<td><span class="status {badge}">{esc(status or "closed")}</span></td>'
            f'<td class="reason">{esc(request.get("reason") or "")}</td></tr>'
        )
    return _table(("time", "method", "path", "status", "reason"), rows, "No REST calls yet.")


def render_dashboard(store: Store, *, subtitle: str) -> str:
    users = store.list_records("user")
    accounts = store.list_records("account")
    events = store.list_events()
    calls = store.list_sdk_calls()
    identifies = [call for call in calls if call["method"] == "identify"]
    requests = store.list_requests(limit=_MAX_ROWS)
    session_count = len({s.event.get("sessionId") for s in events} - {None})
    counts = "".join(
        f"<span><b>{count}</b>{esc(label)}</span>"
        for count, label in (
            (len(users), "users"),
            (len(accounts), "accounts"),
            (session_count, "sessions"),
            (len(events), "events"),
            (len(calls), "SDK calls"),
        )
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="3">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>PX devserver</title>
<style>{_CSS}</style>
</head>
<body>
<header><h1>PX devserver</h1><span class="meta">{esc(subtitle)}</span>
<div class="counts">{counts}</div></header>
<main>
<section><h2>Identify calls from the SDK</h2>{_identifies(identifies)}</section>
<section><h2>REST calls received</h2>{_requests(requests)}</section>
<section><h2>Users</h2>{_records(users, "identifyId", "No users yet.")}</section>
<section><h2>Accounts</h2>{_records(accounts, "id", "No accounts yet.")}</section>
<section><h2>Sessions and page views</h2>{_sessions(events)}</section>
<section><h2>Latest custom events</h2>{_latest_events(events)}</section>
</main>
</body>
</html>
"""
