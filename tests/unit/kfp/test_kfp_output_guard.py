"""RedactingTextStream: values split over writes, multi-line values, flush, pass-through."""

from __future__ import annotations

import io
import json
import logging
from urllib.parse import quote

import pytest

from runlease.redact import Redactor
from runlease_kfp.output_guard import RedactingTextStream, guard_process_output

SECRET = "s3cr3t-Value-4711"  # runlease: allow secret-assignment (test fixture)
PEM = "-----BEGIN KEY-----\nQUJDREVGR0hJSktMTU5PUA==\nUVJTVFVWV1hZWmFiY2RlZg==\n-----END KEY-----"


@pytest.fixture()
def redactor() -> Redactor:
    r = Redactor()
    r.add_many([SECRET, PEM])
    return r


def make(redactor: Redactor) -> tuple[RedactingTextStream, io.StringIO]:
    target = io.StringIO()
    return RedactingTextStream(target, redactor), target


def test_print_pieces_are_joined_before_masking(redactor: Redactor) -> None:
    stream, target = make(redactor)
    print("password:", SECRET[:6], end="", file=stream)
    print(SECRET[6:], "done", file=stream)
    assert target.getvalue() == "password: *** done\n"


def test_partial_line_waits_for_newline_or_flush(redactor: Redactor) -> None:
    stream, target = make(redactor)
    stream.write("progress 10% ")
    assert target.getvalue() == ""
    stream.flush()
    assert target.getvalue() == "progress 10% "
    stream.write(f"token={SECRET}")
    stream.flush()
    assert SECRET not in target.getvalue() and target.getvalue().endswith("token=***")


def test_multiline_value_is_held_until_complete(redactor: Redactor) -> None:
    stream, target = make(redactor)
    stream.write("key follows\n")
    stream.write(PEM)  # print(PEM) writes the value, then "\n" separately
    assert "BEGIN KEY" not in target.getvalue()
    stream.write("\n")
    out = target.getvalue()
    assert out == "key follows\n***\n"
    for line in PEM.splitlines():
        assert line not in out


def test_json_and_url_encoded_forms_are_masked(redactor: Redactor) -> None:
    odd = 'pa ss/w\u00f6rd"+&x'
    redactor.add(odd)
    stream, target = make(redactor)
    stream.write(f"dsn=postgres://etl:{quote(odd, safe='')}@db/x body={json.dumps({'pw': odd})}\n")
    out = target.getvalue()
    assert quote(odd, safe="") not in out and json.dumps(odd)[1:-1] not in out and out.count("***") == 2


def test_plain_text_passes_through_unchanged(redactor: Redactor) -> None:
    stream, target = make(redactor)
    text = "épreuve 1\nline two\n"
    stream.write(text)
    assert target.getvalue() == text
    assert stream.encoding == getattr(target, "encoding", "utf-8")
    with pytest.raises(TypeError):
        stream.write(b"bytes")  # type: ignore[arg-type]


def test_guard_masks_existing_handlers_and_wraps_std_streams(redactor: Redactor, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logger = logging.getLogger("kfp-guard-test")
    logger.addHandler(handler)
    logger.propagate = False
    fake_out, fake_err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", fake_out)
    monkeypatch.setattr(sys, "stderr", fake_err)
    try:
        guard_process_output(redactor)
        guard_process_output(redactor)  # idempotent: no double wrapping
        assert isinstance(sys.stdout, RedactingTextStream) and sys.stdout.target is fake_out
        logger.warning("pw=%s", SECRET)
        print("pw", SECRET)
        print("err", SECRET, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        logger.removeHandler(handler)
    assert "pw=***" in buffer.getvalue()
    assert fake_out.getvalue() == "pw ***\n" and fake_err.getvalue() == "err ***\n"
