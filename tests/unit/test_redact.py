from __future__ import annotations

import io
import json
import logging
import sys
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from runlease.redact import RedactingFilter, Redactor, default_redactor, install_redacting_filter

SECRET = "s3cr3t-Passw0rd"  # runlease: allow secret-assignment (test fixture)


def make(*values: str, **kwargs: object) -> Redactor:
    r = Redactor(**kwargs)  # type: ignore[arg-type]
    r.add_many(values)
    return r


# --- Redactor ---------------------------------------------------------------


def test_plain_value_masked() -> None:
    r = make(SECRET)
    assert r.redact(f"connecting with {SECRET} now") == "connecting with *** now"


def test_custom_replacement() -> None:
    r = make(SECRET, replacement="[MASKED]")
    assert r.redact(f"pw={SECRET}") == "pw=[MASKED]"


def test_no_patterns_returns_text_unchanged() -> None:
    text = "nothing registered " * 10
    assert Redactor().redact(text) is text


def test_url_encoded_forms_masked() -> None:
    secret = "p@ss w/rd+x=1&y"
    r = make(secret)
    uri = f"postgresql://user:{quote(secret, safe='')}@db:5432/app"
    assert r.redact(uri) == "postgresql://user:***@db:5432/app"
    form = f"password={quote_plus(secret)}&user=bob"
    assert quote_plus(secret) != quote(secret, safe="")
    assert r.redact(form) == "password=***&user=bob"


def test_json_escaped_forms_masked() -> None:
    secret = 'pa"ss\\wörd\tx'
    r = make(secret)
    for ensure_ascii in (True, False):
        payload = json.dumps({"password": secret, "user": "bob"}, ensure_ascii=ensure_ascii)
        assert r.redact(payload) == '{"password": "***", "user": "bob"}'


def test_repr_form_masked() -> None:
    secret = "bell\x07pa'ss\"x"
    r = make(secret)
    text = str({"password": secret})
    out = r.redact(text)
    assert repr(secret)[1:-1] != json.dumps(secret)[1:-1]
    assert repr(secret)[1:-1] in text
    assert repr(secret)[1:-1] not in out
    assert out == text.replace(repr(secret)[1:-1], "***")


def test_values_shorter_than_min_length_ignored() -> None:
    r = make("abcd", "true", min_length=5)
    assert len(r) == 0
    assert r.redact("abcd is true") == "abcd is true"
    r.add("abcde")
    assert len(r) == 1
    assert r.redact("abcde abcd") == "*** abcd"


def test_custom_min_length() -> None:
    r = make("1234567", "12345678", min_length=8)
    assert r.redact("1234567 / 12345678") == "1234567 / ***"
    with pytest.raises(ValueError):
        Redactor(min_length=0)


@pytest.mark.parametrize("order", [("abcdefgh12", "abcdefgh1234"), ("abcdefgh1234", "abcdefgh12")])
def test_leftmost_longest(order: tuple[str, str]) -> None:
    r = make(*order)
    assert r.redact("key=abcdefgh1234;") == "key=***;"
    assert r.redact("key=abcdefgh12;") == "key=***;"


def test_non_ascii_secret_and_haystack() -> None:
    secret = "pässwörd🔑東京"
    r = make(secret, "ascii-secret-1")
    text = f"Grüße {secret}✓ ünd ascii-secret-1 → 🚀{secret}"
    assert r.redact(text) == "Grüße ***✓ ünd *** → 🚀***"


def test_lone_surrogates_round_trip() -> None:
    odd = "bad-\udcff-name"  # e.g. an os.fsdecode()d file name
    r = make(SECRET, odd)
    text = f"file=\udcff{SECRET}\udc80 {odd} {quote(odd, safe='', errors='surrogatepass')}"
    assert r.redact(text) == "file=\udcff***\udc80 *** ***"


def test_adjacent_occurrences() -> None:
    r = make(SECRET)
    assert r.redact(SECRET + SECRET) == "******"
    assert r.redact(f"{SECRET} {SECRET}\n{SECRET}") == "*** ***\n***"


def test_overlapping_self_occurrences() -> None:
    r = make("abababab")
    out = r.redact("ababababab")
    assert "abababab" not in out
    assert out == "***ab"


def test_lazy_rebuild_after_add() -> None:
    r = Redactor()
    assert r.redact(f"x {SECRET}") == f"x {SECRET}"
    r.add(SECRET)
    assert r.redact(f"x {SECRET}") == "x ***"
    r.add("another-secret")
    assert r.redact(f"{SECRET} another-secret") == "*** ***"


def test_len_counts_distinct_source_values() -> None:
    r = make(SECRET, SECRET, "p@ss w/rd")
    assert len(r) == 2
    assert SECRET in r
    assert "other" not in r
    assert 12345 not in r


def test_repr_never_contains_values() -> None:
    r = make(SECRET)
    assert SECRET not in repr(r)
    assert SECRET not in str(r)
    assert SECRET not in f"{r!r} {r}"


def test_type_error_does_not_echo_value() -> None:
    r = Redactor()
    with pytest.raises(TypeError) as exc:
        r.add(b"bytes-secret-value")  # type: ignore[arg-type]
    assert "bytes-secret-value" not in str(exc.value)


def test_redact_bytes() -> None:
    secret = "pässwörd-42"
    r = make(secret)
    data = f"head {secret} tail".encode()
    assert r.redact_bytes(data) == b"head *** tail"
    assert r.redact_bytes(b"clean") == b"clean"
    assert Redactor().redact_bytes(data) == data


def test_concurrent_add_and_redact() -> None:
    r = Redactor()
    values = [f"concurrent-secret-{i:05d}" for i in range(2000)]
    text = " | ".join(values[::97])
    errors: list[BaseException] = []
    done = threading.Event()

    def adder() -> None:
        try:
            for i in range(0, len(values), 20):
                r.add_many(values[i : i + 20])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    def redactor() -> None:
        try:
            while not done.is_set():
                r.redact(text)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=adder)] + [threading.Thread(target=redactor) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(r) == len(values)
    assert set(r.redact(text).split(" | ")) == {"***"}


def test_default_redactor_is_singleton() -> None:
    assert default_redactor() is default_redactor()
    assert isinstance(default_redactor(), Redactor)


# --- logging ------------------------------------------------------------------


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    log = logging.getLogger(f"runlease.test.{uuid.uuid4().hex}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    install_redacting_filter(make(SECRET), log)
    yield log, stream
    log.removeHandler(handler)


def test_filter_masks_message_and_args(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    log.info(f"literal {SECRET}")
    log.info("pw=%s", SECRET)
    log.info("%(user)s:%(pw)s", {"user": "bob", "pw": SECRET})
    assert stream.getvalue() == "INFO literal ***\nINFO pw=***\nINFO bob:***\n"


def test_filter_applies_to_child_logger_records(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    logging.getLogger(log.name + ".child").warning("child says %s", SECRET)
    assert stream.getvalue() == "WARNING child says ***\n"


def test_filter_masks_traceback(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    try:
        raise ValueError(f"cannot connect with {SECRET}")
    except ValueError:
        log.exception("failed")
    out = stream.getvalue()
    assert SECRET not in out
    assert "Traceback (most recent call last)" in out
    assert "ValueError: cannot connect with ***" in out


def test_filter_masks_stack_info(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    log.info("here", stack_info=True, extra={"unused": "s3cr3t-Passw0rd"})  # source line shows in the stack
    out = stream.getvalue()
    assert "Stack (most recent call last)" in out
    assert 'extra={"unused": "***"}' in out
    assert SECRET not in out


def test_filter_on_two_handlers(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    second = io.StringIO()
    handler = logging.StreamHandler(second)
    log.addHandler(handler)
    try:
        install_redacting_filter(default_redactor(), log)  # different redactor: second handler gets both
        install_redacting_filter(make(SECRET), log)
        try:
            raise RuntimeError(SECRET)
        except RuntimeError:
            log.error("pw=%s", SECRET, exc_info=True)
    finally:
        log.removeHandler(handler)
    for out in (stream.getvalue(), second.getvalue()):
        assert SECRET not in out
        assert "RuntimeError: ***" in out


def test_install_skips_duplicate_filter() -> None:
    r = make(SECRET)
    log = logging.getLogger(f"runlease.test.{uuid.uuid4().hex}")
    handler = logging.StreamHandler(io.StringIO())
    log.addHandler(handler)
    install_redacting_filter(r, log)
    install_redacting_filter(r, log)
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1


def test_install_defaults_to_root_logger() -> None:
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    try:
        install_redacting_filter(make(SECRET))
        logging.getLogger(f"runlease.test.{uuid.uuid4().hex}").error("root sees %s", SECRET)
    finally:
        root.removeHandler(handler)
    assert stream.getvalue() == "root sees ***\n"


def test_filter_survives_broken_record(
    logger: tuple[logging.Logger, io.StringIO], capsys: pytest.CaptureFixture[str]
) -> None:
    log, stream = logger
    # Too few args: the handler reports a logging error on stderr, including
    # the record's args. Drive our handler directly: pytest's own capture
    # handlers would turn the logging error into a test failure.
    handler = log.handlers[0]
    handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 1, "%s and %s", (SECRET,), None))
    err = capsys.readouterr().err
    assert "Logging error" in err
    assert SECRET not in err

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    record = logging.LogRecord("x", logging.INFO, __file__, 1, Unprintable(), (SECRET,), None)
    assert RedactingFilter(make(SECRET)).filter(record) is True
    assert record.args == ("***",)


def test_filter_never_raises_when_redactor_breaks() -> None:
    class Broken(Redactor):
        def redact(self, text: str) -> str:
            raise RuntimeError("boom")

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "pw=%s", (SECRET,), sys.exc_info())
    record.stack_info = "stack"
    assert RedactingFilter(Broken()).filter(record) is True


# --- properties -----------------------------------------------------------------

# The replacement character is excluded from secrets: a secret made of "*"
# could be re-formed by the mask itself plus neighbouring text, which no
# masker can prevent without changing the replacement.
secret_chars = st.characters(blacklist_characters="*")
secrets_st = st.lists(st.text(secret_chars, min_size=5, max_size=24), min_size=1, max_size=5, unique=True)


def all_forms(value: str) -> list[str]:
    return [
        value,
        quote(value, safe="", errors="surrogatepass"),
        quote_plus(value, errors="surrogatepass"),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
    ]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secrets=secrets_st, chunks=st.lists(st.text(), max_size=8), data=st.data())
def test_property_secrets_never_survive(secrets: list[str], chunks: list[str], data: st.DataObject) -> None:
    pieces = list(chunks)
    for secret in data.draw(st.lists(st.sampled_from(secrets), min_size=1, max_size=6)):
        pieces.insert(data.draw(st.integers(0, len(pieces))), secret)
    text = "".join(pieces)
    out = make(*secrets).redact(text)
    for secret in secrets:
        assert secret not in out


@settings(deadline=None)
@given(secrets=secrets_st, text=st.text())
def test_property_clean_text_unchanged(secrets: list[str], text: str) -> None:
    assume(not any(form in text for s in secrets for form in all_forms(s)))
    assert make(*secrets).redact(text) == text
