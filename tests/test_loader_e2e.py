"""``python -m px_middleware load`` against the PX stand-in over real HTTP.

The CLI runs as a subprocess, the way a user runs it; what the devserver stored and
what the errors file says are the assertions.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.devserver import DevServer

KEY = "AP-LOADER000001-2"


def write_users(path: Path, count: int, start: int = 0) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["identifyId", "email", "signUpDate", "score", "customAttributes.plan"])
        for i in range(start, start + count):
            writer.writerow([f"u{i}", f"u{i}@acme.test", "2024-01-02", str(i), "gold"])
    return path


def load(
    devserver: DevServer, *args: str, cwd: Path, product_key: str | None = KEY
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PX_API_KEY": devserver.api_key}
    env.pop("PX_PRODUCT_KEY", None)
    if product_key is not None:
        env["PX_PRODUCT_KEY"] = product_key
    return subprocess.run(
        [sys.executable, "-m", "px_middleware", "load", *args, "--api-url", devserver.api_url],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def test_upsert_creates_then_updates_and_update_only_skips(
    devserver: DevServer, tmp_path: Path
) -> None:
    users = write_users(tmp_path / "users.csv", 5)
    first = load(devserver, "users", str(users), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "created 5, updated 0" in first.stderr
    stored = {u["identifyId"]: u for u in devserver.users()}
    assert stored["u3"]["signUpDate"] == 1704153600000 and stored["u3"]["score"] == 3
    assert stored["u3"]["customAttributes"] == {"plan": "gold"}
    assert stored["u3"]["propertyKeys"] == [KEY]

    second = load(devserver, "users", str(users), cwd=tmp_path)
    assert "created 0, updated 5" in second.stderr

    more = write_users(tmp_path / "more.csv", 3, start=4)  # u4 exists, u5 and u6 do not
    only = load(devserver, "users", str(more), "--update-only", cwd=tmp_path)
    assert "updated 1, skipped 2" in only.stderr
    assert sorted(u["identifyId"] for u in devserver.users()) == [f"u{i}" for i in range(5)]


def test_dry_run_only_reads_metadata(devserver: DevServer, tmp_path: Path) -> None:
    users = write_users(tmp_path / "users.csv", 4)
    result = load(devserver, "users", str(users), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    bodies = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [b["body"]["identifyId"] for b in bodies] == ["u0", "u1", "u2", "u3"]
    assert bodies[0]["body"]["signUpDate"] == 1704153600000
    # The same attribute metadata as a real run reads; nothing is written.
    assert [(r["method"], r["path"]) for r in devserver.requests()] == [
        ("GET", "/v1/admin/model/USER/attributes")
    ]


def test_a_429_storm_loses_no_row(devserver: DevServer, tmp_path: Path) -> None:
    users = write_users(tmp_path / "users.csv", 20)
    devserver.faults(fail_next=15, status=429, retry_after=0)
    result = load(devserver, "users", str(users), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(u["identifyId"] for u in devserver.users()) == sorted(
        f"u{i}" for i in range(20)
    )
    assert any(r["status"] == 429 for r in devserver.requests())


def test_a_rejected_row_lands_in_the_errors_file_with_pxs_message(
    devserver: DevServer, tmp_path: Path
) -> None:
    users = tmp_path / "users.csv"
    users.write_text(
        "identifyId,email,score\nu1,a@acme.test,1\nu2,b@acme.test,not-a-number\n"
    )
    result = load(devserver, "users", str(users), "--errors", "bad.csv", cwd=tmp_path)
    assert "created 1" in result.stderr and "failed 1" in result.stderr
    with (tmp_path / "bad.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["identifyId"] for r in rows] == ["u2"]
    assert "score" in rows[0]["error"] and "not-a-number" in rows[0]["error"]


def test_resume_after_a_kill_finishes_without_duplicates(
    devserver: DevServer, tmp_path: Path
) -> None:
    users = write_users(tmp_path / "users.csv", 60)
    devserver.faults(latency_ms=50)  # slow enough to be killed mid-file
    env = {**os.environ, "PX_API_KEY": devserver.api_key, "PX_PRODUCT_KEY": KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "px_middleware", "load", "users", str(users),
         "--api-url", devserver.api_url, "--workers", "1"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    state = tmp_path / "users.px-load-state.json"
    devserver.wait_for(lambda: state.exists() and len(devserver.users()) >= 10, timeout=60)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(devserver.users())
    assert done_before < 60
    devserver.faults()  # back to full speed
    requests_before = len(devserver.requests())
    result = load(devserver, "users", str(users), "--resume", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(u["identifyId"] for u in devserver.users()) == sorted(
        f"u{i}" for i in range(60)
    )
    # Rows acknowledged before the kill are not sent again; a row in flight at the
    # kill may be re-sent, which finds it and updates it (PUT), never a duplicate.
    resumed = devserver.requests()[requests_before:]
    creates = [r for r in resumed if r["method"] == "POST" and r["status"] == 201]
    assert len(creates) == 60 - done_before
    assert len(resumed) < 2 * 60 - done_before  # resumed, not restarted from row 1


def row_lines(stderr: str, name: str) -> list[str]:
    """The per-row problem lines a run printed (``<file> row N: reason``)."""
    return sorted(line for line in stderr.splitlines() if line.startswith(f"{name} row "))


def test_sparse_jsonl_keeps_every_value(devserver: DevServer, tmp_path: Path) -> None:
    path = tmp_path / "users.jsonl"
    rows = [
        {"identifyId": "u1", "email": "a@acme.test"},
        {"identifyId": "u2", "website": "ignored for users", "title": "CTO"},
        {"identifyId": "u3", "customAttributes": {"plan": "pro"}, "location": {"city": "Oslo"}},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = load(devserver, "users", str(path), cwd=tmp_path)
    assert "created 3" in result.stderr, result.stderr
    assert "'website' is not mapped" in result.stderr  # a key of row 2 only, still seen
    stored = {u["identifyId"]: u for u in devserver.users()}
    assert stored["u2"]["title"] == "CTO"
    assert stored["u3"]["customAttributes"] == {"plan": "pro"}
    assert stored["u3"]["location"] == {"city": "Oslo"}


def test_a_503_on_the_metadata_read_is_retried(devserver: DevServer, tmp_path: Path) -> None:
    devserver.declare_attributes(USER={"seats": "NUMBER"})
    path = tmp_path / "users.csv"
    path.write_text("identifyId,customAttributes.seats\nu1,12\n")
    devserver.faults(fail_next=1, status=503)
    result = load(devserver, "users", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metadata = [r["status"] for r in devserver.requests() if "/admin/model/" in r["path"]]
    assert metadata == [503, 200]
    # Typed by PX's metadata: a number, not the text "12".
    assert devserver.users()[0]["customAttributes"] == {"seats": 12}


def test_one_slow_row_does_not_stop_the_others(devserver: DevServer, tmp_path: Path) -> None:
    users = write_users(tmp_path / "users.csv", 200)
    devserver.faults(slow_path="/v1/users/u0", slow_ms=4000, slow_next=1)
    result = load(devserver, "users", str(users), "--rate", "1000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    log = devserver.requests()
    slow = next(i for i, r in enumerate(log) if r["path"] == "/v1/users/u0")
    # Requests are logged when answered: everything logged before u0's PUT went through
    # while it was held. Other ids' rows (a PUT and a POST each) kept flowing.
    others = {r["path"] for r in log[:slow] if r["path"].startswith("/v1/users/")}
    assert len(others) >= 150, f"only {len(others)} other rows went through"
    assert len(devserver.users()) == 200


def test_a_cp1252_file_names_the_byte_or_loads_with_encoding(
    devserver: DevServer, tmp_path: Path
) -> None:
    path = tmp_path / "users.csv"
    title = "Senior Vice President of Quality Assurance and Release Engineering"
    lines = ["identifyId,title,lastName"] + [f"u{i},{title},Smith" for i in range(120)]
    lines[110] = f"u109,{title},M\u00fcller"  # past the first 8 KB
    path.write_bytes(("\n".join(lines) + "\n").encode("cp1252"))
    result = load(devserver, "users", str(path), "--rate", "1000", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "row 111" in result.stderr and "byte 0xfc at offset" in result.stderr
    assert "--encoding" in result.stderr and "failed 1" in result.stderr
    assert len(devserver.users()) == 119

    devserver.reset()
    fixed = load(devserver, "users", str(path), "--encoding", "cp1252", "--rate", "1000",
                 cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    stored = {u["identifyId"]: u for u in devserver.users()}
    assert len(stored) == 120 and stored["u109"]["lastName"] == "Müller"
    assert not (tmp_path / "users.errors.csv").exists()  # the errors file is per run


def test_dry_run_and_real_run_report_the_same_bad_rows(
    devserver: DevServer, tmp_path: Path
) -> None:
    devserver.declare_attributes(USER={"seats": "NUMBER"})
    path = tmp_path / "users.csv"
    path.write_text(
        "identifyId,gender,score,signUpDate,customAttributes.seats\n"
        "u1,female,3,2024-01-02,4\n"
        "u2,robot,3,2024-01-02,4\n"  # not in the gender enum
        "u3,male,3.5,2024-01-02,4\n"  # score is an integer in PX
        "u4,male,3,20240102,4\n"  # ambiguous date
        "u5,male,3,2024-01-02,lots\n"  # NUMBER by PX's metadata only
        "u6,,,,\n"
    )
    dry = load(devserver, "users", str(path), "--dry-run", cwd=tmp_path)
    real = load(devserver, "users", str(path), cwd=tmp_path)
    dry_rows = row_lines(dry.stderr, str(path))
    assert dry_rows == row_lines(real.stderr, str(path))
    assert [line.split(":")[0].rsplit(" ", 1)[1] for line in dry_rows] == ["3", "4", "5", "6"]
    stored = {u["identifyId"]: u for u in devserver.users()}
    assert sorted(stored) == ["u1", "u6"] and stored["u1"]["gender"] == "FEMALE"


def test_a_product_key_is_required_before_any_request(
    devserver: DevServer, tmp_path: Path
) -> None:
    users = write_users(tmp_path / "users.csv", 2)
    result = load(devserver, "users", str(users), cwd=tmp_path, product_key=None)
    assert result.returncode == 2
    assert "PX_PRODUCT_KEY" in result.stderr
    assert devserver.requests() == []


def test_state_is_saved_in_batches_not_per_row(devserver: DevServer, tmp_path: Path) -> None:
    import datetime as dt
    import io

    import httpx

    from px_middleware.delivery.ratelimit import TokenBucket
    from px_middleware.rest import PXRestClient
    from px_middleware.tools.loader.errorfile import ErrorFile
    from px_middleware.tools.loader.fields import SCHEMAS
    from px_middleware.tools.loader.mapping import Options, build_plan
    from px_middleware.tools.loader.reader import Source
    from px_middleware.tools.loader.runner import Loader, Reporter, Settings
    from px_middleware.tools.loader.sender import Gate, LimitedTransport, UnitSender
    from px_middleware.tools.loader.state import AckTracker, StateFile

    class CountingState(StateFile):
        saves = 0

        def save(self, tracker: AckTracker) -> None:
            CountingState.saves += 1
            super().save(tracker)

    rows = 300
    path = write_users(tmp_path / "users.csv", rows)
    gate = Gate()
    transport = LimitedTransport(httpx.HTTPTransport(), TokenBucket(10_000), gate)
    with Source(path) as source, PXRestClient(
        devserver.api_url, devserver.api_key, transport=transport
    ) as client:
        plan = build_plan(SCHEMAS["users"], source.header, None, Options(dt.timezone.utc, KEY))
        state = CountingState(tmp_path / "state.json", path, "users")
        errors = ErrorFile(tmp_path / "errors.csv", "csv", source.header, append=False)
        loader = Loader(source, plan, UnitSender(client, "users", "upsert", gate), errors,
                        state, Settings(), Reporter("users.csv", io.StringIO()))
        result = loader.run()
    assert result.complete and result.counts.created == rows
    # At most one save a second (or per 500 rows), and the final one; the old loader
    # saved after every row (300 times).
    assert 1 <= CountingState.saves <= rows // 10
    assert json.loads((tmp_path / "state.json").read_text())["resume_from"] == rows
