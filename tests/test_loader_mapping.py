"""Column → field mapping, the mapping file, streaming readers and resume bookkeeping."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from px_middleware.tools.loader.fields import SCHEMAS
from px_middleware.tools.loader.mapping import (
    MappingFile,
    Options,
    PlanError,
    build_plan,
    load_mapping,
)
from px_middleware.tools.loader.reader import Source, SourceError, flatten
from px_middleware.tools.loader.state import AckTracker, StateError, StateFile

DATA = Path(__file__).parent / "data" / "loader"
KEY = "AP-TEST00-2"
UTC = Options(tz=dt.timezone.utc, product_key=KEY)
USERS, ACCOUNTS, EVENTS = SCHEMAS["users"], SCHEMAS["accounts"], SCHEMAS["events"]


# -- mapping ---------------------------------------------------------------------------
def test_default_mapping_uses_columns_named_like_px_fields() -> None:
    header = ["identifyId", "email", "score", "signUpDate", "customAttributes.plan", "shoe"]
    plan = build_plan(USERS, header, None, UTC)
    body, problems = plan.build(
        0,
        {
            "identifyId": "u1",
            "email": "a@example.com",
            "score": "7",
            "signUpDate": "2024-03-01",
            "customAttributes.plan": "pro",
            "shoe": "42",
        },
    )
    assert problems == []
    assert body == {
        "identifyId": "u1",
        "email": "a@example.com",
        "score": 7,
        "signUpDate": 1_709_251_200_000,
        "customAttributes": {"plan": "pro"},
        "propertyKeys": [KEY],
    }
    assert plan.warnings == ("column 'shoe' is not mapped to a PX field and is ignored",)


def test_custom_mapping_file_with_location_and_types() -> None:
    mapping = load_mapping(DATA / "users.toml")
    with Source(DATA / "users.csv") as source:
        plan = build_plan(USERS, source.header, mapping, Options(dt.timezone.utc, "AP-TEST00-2"))
        records = list(source.records())
    assert plan.warnings == ()  # "Notes" is listed under ignore
    body, problems = plan.build(records[0].ordinal, records[0].values)
    assert problems == []
    assert body == {
        "identifyId": "u-1",
        "email": "ada@example.com",
        "firstName": "Ada",
        "lastName": "Lovelace",
        "customAttributes": {"plan": "pro", "seats": 12, "beta": True},
        "signUpDate": 1_709_285_400_000,
        "location": {"city": "London", "countryCode": "GB"},
        "propertyKeys": ["AP-TEST00-2"],
    }
    # Every bad cell of a row is reported, each with its column.
    _, problems = plan.build(records[2].ordinal, records[2].values)
    assert [column for column, _ in problems] == ["Seats", "Beta", "Signed up"]


def test_empty_cells_are_omitted_not_cleared() -> None:
    plan = build_plan(USERS, ["identifyId", "email", "score"], None, UTC)
    body, problems = plan.build(0, {"identifyId": "u1", "email": "", "score": " "})
    assert (body, problems) == ({"identifyId": "u1", "propertyKeys": [KEY]}, [])


def test_mapping_to_missing_column_is_an_error_before_anything_is_sent() -> None:
    mapping = MappingFile(columns={"Emial": "email", "id": "identifyId"})
    with pytest.raises(PlanError) as info:
        build_plan(USERS, ["id", "Email"], mapping, UTC)
    assert info.value.problems == [
        "mapped column 'Emial' is not in the file (did you mean 'Email'?)"
    ]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"a": "nickname"}, "not a PX users field"),
        ({"a": "location.planet"}, "not a PX users field"),
        ({"a": "attributes.x"}, "not a PX users field"),
        ({"a": "customAttributes."}, "not a PX users field"),
        ({"a": "email", "b": "email"}, "both map to 'email'"),
    ],
)
def test_bad_targets_are_errors(columns: dict[str, str], message: str) -> None:
    mapping = MappingFile(columns={"id": "identifyId", **columns})
    with pytest.raises(PlanError, match=message):
        build_plan(USERS, ["id", "a", "b"], mapping, UTC)


def test_key_column_is_required() -> None:
    with pytest.raises(PlanError, match="no column maps to 'id'"):
        build_plan(ACCOUNTS, ["name"], None, UTC)


def test_type_precedence_mapping_then_px_metadata_then_defaults() -> None:
    header = ["identifyId", "score", "customAttributes.seats", "customAttributes.vip",
              "customAttributes.note", "phone"]
    remote = {"seats": "NUMBER", "vip": "BOOLEAN", "score": "STRING", "identifyId": "NUMBER"}
    mapping = MappingFile(types={"customAttributes.vip": "STRING"})
    plan = build_plan(USERS, header, mapping, UTC, remote)  # type: ignore[arg-type]
    types = {c.path: c.type for c in plan.columns}
    assert types == {
        "identifyId": "STRING",  # PX's own fields keep the model's types
        "score": "NUMBER",
        "customAttributes.seats": "NUMBER",  # PX's metadata
        "customAttributes.vip": "STRING",  # the mapping file wins
        "customAttributes.note": "STRING",  # unknown custom attributes are text
        "phone": "STRING",
    }


@pytest.mark.parametrize("column", ["numberOfVisits", "lastSeenDate", "aptrinsicId"])
def test_read_only_fields_are_a_mapping_error(column: str) -> None:
    with pytest.raises(PlanError, match=f"{column}.*read-only in PX"):
        build_plan(USERS, ["identifyId", column], None, UTC)
    mapping = MappingFile(columns={"visits": column})
    with pytest.raises(PlanError, match=f"'visits' maps to '{column}', which is read-only"):
        build_plan(USERS, ["identifyId", "visits"], mapping, UTC)
    with pytest.raises(PlanError, match=r"numberOfUsers.*read-only"):
        build_plan(ACCOUNTS, ["id", "name", "numberOfUsers"], None, UTC)
    # Ignoring the column is the way out, and says so.
    assert build_plan(USERS, ["identifyId", column], MappingFile(ignore=frozenset({column})),
                      UTC).columns[0].path == "identifyId"


def test_writable_fields_from_the_model_are_mapping_targets() -> None:
    header = ["identifyId", "type", "globalUnsubscribe", "sfdcContactId", "gender", "score",
              "location.coordinates.latitude"]
    plan = build_plan(USERS, header, None, UTC)
    body, problems = plan.build(0, {
        "identifyId": "u1", "type": "lead", "globalUnsubscribe": "true", "sfdcContactId": "003",
        "gender": "female", "score": "3", "location.coordinates.latitude": "48.85",
    })
    assert problems == []
    assert body == {
        "identifyId": "u1", "type": "LEAD", "globalUnsubscribe": True, "sfdcContactId": "003",
        "gender": "FEMALE", "score": 3, "location": {"coordinates": {"latitude": 48.85}},
        "propertyKeys": [KEY],
    }
    _, problems = plan.build(0, {"identifyId": "u1", "score": "3.5", "gender": "f"})
    assert [column for column, _ in problems] == ["gender", "score"]
    assert "3.5" in problems[1][1]
    header = ["id", "name", "parentGroupId", "renewalDate", "healthScore", "gsId", "nps", "csm",
              "lastSeenDate"]
    plan = build_plan(ACCOUNTS, header, None, UTC)
    body, problems = plan.build(0, {
        "id": "a", "name": "A", "parentGroupId": "p", "renewalDate": "2024-03-01",
        "healthScore": "80", "gsId": "g", "nps": "7.5", "csm": "c", "lastSeenDate": "2024-03-01",
    })
    assert problems == []
    assert body["healthScore"] == 80 and body["nps"] == 7.5
    assert body["renewalDate"] == body["lastSeenDate"] == 1_709_251_200_000


def test_accounts_without_name_cannot_be_created_but_can_be_updated() -> None:
    header = ["id", "plan"]
    _, problems = build_plan(ACCOUNTS, header, None, UTC).build(0, {"id": "a", "plan": "x"})
    assert problems == [("(not mapped)", "name is required")]
    update = Options(tz=dt.timezone.utc, product_key=KEY, create=False)
    _, problems = build_plan(ACCOUNTS, header, None, update).build(0, {"id": "a", "plan": "x"})
    assert problems == []


def test_accounts_numbers_and_events_attributes() -> None:
    plan = build_plan(ACCOUNTS, ["id", "name", "numberOfEmployees", "sicCode"], None, UTC)
    body, _ = plan.build(
        0, {"id": "a1", "name": "A", "numberOfEmployees": "250", "sicCode": "7372"}
    )
    assert body == {"id": "a1", "name": "A", "numberOfEmployees": 250, "sicCode": "7372",
                    "propertyKeys": [KEY]}

    options = Options(dt.timezone.utc, "AP-TEST00-2")
    mapping = MappingFile(types={"attributes.amount": "NUMBER"})
    header = ["eventName", "identifyId", "date", "attributes.amount", "attributes.note"]
    plan = build_plan(EVENTS, header, mapping, options)
    values = {
        "eventName": "invoice_paid",
        "identifyId": "u1",
        "date": "1709285400",
        "attributes.amount": "12.5",
        "attributes.note": "late",
    }
    body, problems = plan.build(5, values)
    assert problems == []
    event_id = body.pop("eventId")
    assert body == {
        "eventName": "invoice_paid",
        "identifyId": "u1",
        "date": 1_709_285_400_000,
        "attributes": {"amount": 12.5, "note": "late"},
        "userType": "USER",
        "propertyKey": "AP-TEST00-2",
    }
    # Stable per row and content, so a re-sent row is recognisable; distinct per row.
    assert plan.build(5, values)[0]["eventId"] == event_id
    assert plan.build(6, values)[0]["eventId"] != event_id


def test_events_need_a_product_key_and_valid_user_type() -> None:
    for schema, header in ((EVENTS, ["eventName", "identifyId"]), (USERS, ["identifyId"])):
        with pytest.raises(PlanError, match="PX_PRODUCT_KEY"):
            build_plan(schema, header, None, Options(tz=dt.timezone.utc))
    plan = build_plan(EVENTS, ["eventName", "identifyId", "userType"], None, Options(UTC.tz, "k"))
    _, problems = plan.build(0, {"eventName": "x", "identifyId": "u", "userType": "robot"})
    assert problems == [
        ("userType", "userType must be one of LEAD, USER, VISITOR, EMPTY_USER_TYPE, got 'robot'")
    ]
    _, problems = plan.build(0, {"eventName": "x", "userType": "lead"})
    assert problems == [("identifyId", "identifyId is required")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[columns]\na = 1\n", "must map column names"),
        ('[types]\n"customAttributes.x" = "INTEGER"\n', "use one of STRING"),
        ("colums = 1\n", "unknown keys"),
        ("[columns\n", "not valid TOML"),
        ('ignore = "Notes"\n', "ignore must be a list"),
    ],
)
def test_bad_mapping_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "map.toml"
    path.write_text(text)
    with pytest.raises(PlanError, match=message):
        load_mapping(path)


# -- reader ----------------------------------------------------------------------------
def test_csv_rows_are_numbered_like_a_spreadsheet(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_bytes(
        b'\xef\xbb\xbfidentifyId,email\r\nu1,"a@x"\r\n\r\nu2,"multi\r\nline",extra\r\nu3\r\n'
    )
    with Source(path) as source:
        assert source.header == ["identifyId", "email"]  # the BOM is not part of the name
        records = list(source.records())
    assert [(r.ordinal, r.row) for r in records] == [(0, 2), (2, 4), (3, 5)]
    assert records[1].problem == "row has 3 cells but the header has 2"
    assert records[2].values == {"identifyId": "u3"}  # short rows: missing cells are empty


def test_csv_records_resume_from_an_ordinal(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_text("identifyId\n" + "".join(f"u{i}\n" for i in range(10)))
    with Source(path) as source:
        assert [r.values["identifyId"] for r in source.records(start=7)] == ["u7", "u8", "u9"]


def test_jsonl_objects_are_flattened_and_bad_lines_reported(tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    lines = [
        json.dumps({"identifyId": "u1", "location": {"city": "Paris"}, "score": 3}),
        "",
        "{not json",
        "[1, 2]",
        json.dumps({"identifyId": "u2", "customAttributes": {"plan": "pro"}}),
    ]
    path.write_text("\n".join(lines) + "\n")
    with Source(path) as source:
        assert source.format == "jsonl"
        # The union of every object's keys, not the first object's alone.
        assert source.header == ["identifyId", "location.city", "score", "customAttributes.plan"]
        records = list(source.records())
    assert [r.row for r in records] == [1, 3, 4, 5]
    assert records[0].values == {"identifyId": "u1", "location.city": "Paris", "score": 3}
    assert records[1].problem is not None and records[1].problem.startswith("not JSON")
    assert records[2].problem == "not a JSON object"
    assert records[3].values == {"identifyId": "u2", "customAttributes.plan": "pro"}


def test_undecodable_bytes_make_a_bad_record_naming_row_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_bytes(b"identifyId,lastName\nu1,Smith\nu2,M\xfcller\nu3,Ng\n")
    with Source(path) as source:
        records = list(source.records())
    assert [r.values["identifyId"] for r in records] == ["u1", "u2", "u3"]
    assert records[0].problem is None and records[2].problem is None
    assert records[1].row == 3
    assert records[1].problem is not None
    # identifyId,lastName\n is 20 bytes, u1,Smith\n 9, "u2,M" 4: the 0xfc is byte 33.
    assert "byte 0xfc at offset 33" in records[1].problem
    assert "--encoding" in records[1].problem
    with Source(path, encoding="cp1252") as source:
        records = list(source.records())
    assert records[1].problem is None and records[1].values["lastName"] == "Müller"
    with pytest.raises(SourceError, match="not ASCII-compatible"):
        Source(path, encoding="utf-16")


def test_flatten_keeps_lists_as_values() -> None:
    assert flatten({"a": {"b": {"c": 1}}, "d": [1]}) == {"a.b.c": 1, "d": [1]}


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"a,a\n1,2\n", "duplicate column"), (b"\xff\xfeid\n", "header")],
)
def test_unreadable_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "u.csv"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        Source(path)


# -- resume bookkeeping ----------------------------------------------------------------
def test_tracker_keeps_lowest_unfinished_and_finished_records_above_it() -> None:
    tracker = AckTracker()
    for ordinal in (0, 1, 2, 4, 5):  # 3 is a blank line: never issued
        tracker.issue(ordinal)
    tracker.finish(1)
    tracker.finish(4)
    assert (tracker.resume_from, tracker.done_above) == (0, [1, 4])
    tracker.finish(0)
    assert (tracker.resume_from, tracker.done_above) == (2, [4])
    tracker.finish(2)
    assert (tracker.resume_from, tracker.done_above) == (5, [])
    tracker.finish(5)
    assert (tracker.resume_from, tracker.done_above) == (6, [])


def test_state_file_round_trip_and_mismatch(tmp_path: Path) -> None:
    source = tmp_path / "u.csv"
    source.write_text("identifyId\nu1\nu2\n")
    state = StateFile(tmp_path / "u.px-load-state.json", source, "users")
    assert state.load() is None
    tracker = AckTracker()
    for ordinal in range(3):
        tracker.issue(ordinal)
    tracker.finish(2)
    state.save(tracker)
    assert state.load() == (0, {2})
    # Rows appended to the file keep the state valid...
    with open(source, "a") as f:
        f.write("u3\n")
    assert StateFile(state.path, source, "users").load() == (0, {2})
    # ...a different file, or another kind, does not.
    with pytest.raises(StateError, match="belongs to a load of users"):
        StateFile(state.path, source, "accounts").load()
    source.write_text("identifyId\nzz\n")
    with pytest.raises(StateError, match="different version"):
        StateFile(state.path, source, "users").load()


# -- errors file -----------------------------------------------------------------------
def test_errors_file_is_per_run_and_keeps_overlong_rows_whole(tmp_path: Path) -> None:
    from px_middleware.tools.loader.errorfile import ErrorFile
    from px_middleware.tools.loader.reader import Record

    path = tmp_path / "u.errors.csv"
    path.write_text("identifyId,error\nstale,from an earlier run\n")
    errors = ErrorFile(path, "csv", ["identifyId", "email"], append=False)
    assert not path.exists()  # an earlier run's failures are not this run's
    errors.write(Record(0, 2, {}, ["u1", "a@x", "extra"], "row has 3 cells"), "row has 3 cells")
    errors.write(Record(1, 3, {}, ["u2"], "bad"), "email is required")
    errors.close()
    assert path.read_text().splitlines() == [
        "identifyId,email,error",
        "u1,a@x,row has 3 cells,extra",  # the extra cell survives, after the reason
        "u2,,email is required",
    ]
    again = ErrorFile(path, "csv", ["identifyId", "email", "error"], append=True)
    again.write(Record(0, 2, {}, ["u2", "", "email is required"], None), "still bad")
    again.close()
    assert path.read_text().splitlines()[-1] == "u2,,still bad"
