"""Standard Webhooks signing and verification (wallet_sdk.webhooks).

The published vectors come from the reference libraries' own test suites in
github.com/standard-webhooks/standard-webhooks (cited next to each); everything else is derived
from them with injected ``now`` so that no test depends on the wall clock.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wallet_sdk.webhooks import (
    SECRET_PREFIX,
    WebhookVerificationError,
    generate_secret,
    sign,
    signature_header,
    verify,
)

# Vector 1: standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py
# (test_sign_function, commit caacf51459e2b5ba9180be5ac8b4e1971b906d92); the same values are in
# libraries/go/webhook_test.go (TestWebhookSign) and libraries/javascript/src/webhook.test.ts
# ("sign function works").
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
PAYLOAD = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
# Same file, test_invalid_signature_raises_error: the vector's signature, last byte changed.
OFF_BY_ONE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="
# Same file and the Go/JS suites, test_multi_sig_payload_is_valid: the decoys around the valid one.
DECOY_V1 = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
DECOY_V2 = "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="

# Vector 2: standard-webhooks/standard-webhooks, libraries/rust/src/lib.rs (tests::test_sign,
# test_no_verify, test_*_multiple_signatures; commit 1e88c9ce08bb2c605fea9a2a540b4a91d31c7a62).
RUST_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
RUST_MSG_ID = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk"
RUST_TIMESTAMP = 1649367553
RUST_PAYLOAD = b'{"email":"test@example.com","username":"test_user"}'
RUST_SIGNATURE = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
RUST_WRONG = "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU="
RUST_DECOYS = (
    "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ=",
    "v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q=",
    "v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=",
)

OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
EVENT = {"type": "payment.succeeded", "data": {"order_id": "o_1", "amount_fen": 1250}}
COMPACT = json.dumps(EVENT, separators=(",", ":")).encode()


def headers(
    signature: str = SIGNATURE, msg_id: str = MSG_ID, timestamp: int | str = TIMESTAMP
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def signed(payload: bytes = COMPACT, secret: str = SECRET, ts: int = TIMESTAMP) -> dict[str, str]:
    return headers(sign(secret, MSG_ID, ts, payload), timestamp=ts)


def rejects(
    match: str, payload: object, hdrs: dict[str, str], secret: str = SECRET, **kw: object
) -> WebhookVerificationError:
    with pytest.raises(WebhookVerificationError, match=match) as info:
        verify(payload, hdrs, secret, now=TIMESTAMP, **kw)  # type: ignore[arg-type]
    return info.value


# --- published vectors ---------------------------------------------------------------------


def test_sign_matches_the_published_vector() -> None:
    assert sign(SECRET, MSG_ID, TIMESTAMP, PAYLOAD) == SIGNATURE


def test_sign_matches_the_rust_library_vector() -> None:
    assert sign(RUST_SECRET, RUST_MSG_ID, RUST_TIMESTAMP, RUST_PAYLOAD) == RUST_SIGNATURE


def test_verify_accepts_the_published_vector_and_returns_the_event() -> None:
    assert verify(PAYLOAD, headers(), SECRET, now=TIMESTAMP) == {"test": 2432232314}


def test_verify_accepts_the_rust_library_vector() -> None:
    hdrs = headers(RUST_SIGNATURE, RUST_MSG_ID, RUST_TIMESTAMP)
    event = verify(RUST_PAYLOAD, hdrs, RUST_SECRET, now=RUST_TIMESTAMP)
    assert event == {"email": "test@example.com", "username": "test_user"}


def test_published_invalid_signatures_are_rejected() -> None:
    rejects("no matching signature", PAYLOAD, headers(OFF_BY_ONE))
    rust = headers(RUST_WRONG, RUST_MSG_ID, RUST_TIMESTAMP)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(RUST_PAYLOAD, rust, RUST_SECRET, now=RUST_TIMESTAMP)


def test_secret_with_and_without_prefix() -> None:
    bare = SECRET.removeprefix(SECRET_PREFIX)
    assert sign(bare, MSG_ID, TIMESTAMP, PAYLOAD) == SIGNATURE
    assert verify(PAYLOAD, headers(), bare, now=TIMESTAMP) == {"test": 2432232314}
    assert verify(PAYLOAD, headers(), f"  {SECRET}\n", now=TIMESTAMP) == {"test": 2432232314}


# --- multiple signatures and rotation ---------------------------------------------------------


def test_one_valid_signature_among_invalid_ones() -> None:
    # The reference suites' multi-signature header: decoys, a v2 entry, the valid one, a decoy.
    header = " ".join([DECOY_V1, DECOY_V2, SIGNATURE, DECOY_V1])
    assert verify(PAYLOAD, headers(header), SECRET, now=TIMESTAMP) == {"test": 2432232314}
    rust = " ".join([RUST_DECOYS[0], RUST_DECOYS[1], RUST_SIGNATURE, RUST_DECOYS[2]])
    hdrs = headers(rust, RUST_MSG_ID, RUST_TIMESTAMP)
    assert verify(RUST_PAYLOAD, hdrs, RUST_SECRET, now=RUST_TIMESTAMP)["username"] == "test_user"


def test_only_invalid_signatures_fail() -> None:
    rejects("none of the 3 v1 signature", PAYLOAD, headers(" ".join(RUST_DECOYS)))


def test_rotation_header_verifies_with_old_and_new_secret() -> None:
    header = signature_header([SECRET, OTHER_SECRET], MSG_ID, TIMESTAMP, COMPACT)
    old, new = header.split(" ")
    assert old == sign(SECRET, MSG_ID, TIMESTAMP, COMPACT)
    assert new == sign(OTHER_SECRET, MSG_ID, TIMESTAMP, COMPACT)
    for secret in (SECRET, OTHER_SECRET):
        assert verify(COMPACT, headers(header), secret, now=TIMESTAMP) == EVENT
    rejects("no matching signature", COMPACT, headers(header), secret=generate_secret())


def test_signature_header_single_secret_dedup_and_bad_arguments() -> None:
    assert signature_header([SECRET], MSG_ID, TIMESTAMP, PAYLOAD) == SIGNATURE
    assert signature_header([SECRET, SECRET], MSG_ID, TIMESTAMP, PAYLOAD) == SIGNATURE
    with pytest.raises(WebhookVerificationError, match="at least one secret"):
        signature_header([], MSG_ID, TIMESTAMP, PAYLOAD)
    with pytest.raises(WebhookVerificationError, match="sequence of secrets"):
        signature_header(SECRET, MSG_ID, TIMESTAMP, PAYLOAD)


def test_non_v1_versions_are_ignored() -> None:
    # v1a is the spec's asymmetric (ed25519) tag; its example header pairs it with a v1 entry.
    v1a = (
        "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJa"
        "A7AZdpXwVLPo3mNl8EM+m7TBAg=="
    )
    assert verify(PAYLOAD, headers(f"{v1a} {SIGNATURE}"), SECRET, now=TIMESTAMP)
    # The valid signature under another version tag does not count.
    rejects(r"no v1 signature.*found only: v1a, v2", PAYLOAD, headers(f"{v1a} v2,{SIGNATURE[3:]}"))
    rejects("no v1 signature", PAYLOAD, headers("garbage-without-comma"))


def test_partial_signatures_fail() -> None:
    # javascript/src/webhook.test.ts, "partial signature throws error".
    rejects("no matching signature", PAYLOAD, headers(SIGNATURE[:8]))
    rejects("no matching signature", PAYLOAD, headers("v1,"))


# --- wrong secret, tampering ------------------------------------------------------------------


def test_wrong_secret() -> None:
    error = rejects("no matching signature", COMPACT, signed(), secret=OTHER_SECRET)
    assert "re-serialised" not in str(error)  # a compact body gets no misleading hint


def test_tampered_payload_id_and_timestamp() -> None:
    good = signed()
    rejects("no matching signature", COMPACT.replace(b"1250", b"1251"), good)
    rejects("no matching signature", COMPACT + b" ", good)
    rejects("no matching signature", COMPACT, {**good, "webhook-id": MSG_ID + "x"})
    rejects("no matching signature", COMPACT, {**good, "webhook-timestamp": str(TIMESTAMP + 1)})


def test_id_with_dot_is_refused() -> None:
    rejects(r"must not contain '\.'", PAYLOAD, headers(msg_id="msg.1"))
    with pytest.raises(WebhookVerificationError, match=r"without '\.'"):
        sign(SECRET, "msg.1", TIMESTAMP, PAYLOAD)


# --- headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_named(name: str) -> None:
    hdrs = headers()
    del hdrs[name]
    rejects(f"missing required header '{name}'", PAYLOAD, hdrs)
    rejects(f"missing required header '{name}'", PAYLOAD, {**hdrs, name: ""})


def test_no_headers_at_all() -> None:
    rejects("missing required header 'webhook-id'", PAYLOAD, {})


def test_header_names_are_case_insensitive() -> None:
    hdrs = {k.title(): v for k, v in headers().items()}
    assert "Webhook-Signature" in hdrs
    assert verify(PAYLOAD, hdrs, SECRET, now=TIMESTAMP) == {"test": 2432232314}
    upper = {k.upper(): f" {v} " for k, v in headers().items()}
    assert verify(PAYLOAD, upper, SECRET, now=TIMESTAMP) == {"test": 2432232314}


def test_conflicting_duplicate_headers_are_refused() -> None:
    hdrs = {**headers(), "Webhook-Id": "msg_other"}
    rejects("conflicting values for the webhook-id header", PAYLOAD, hdrs)


def test_svix_aliases() -> None:
    # svix/svix-webhooks python/svix/webhooks.py reads svix-id/-timestamp/-signature (its tests
    # send only those), falling back to webhook-*; the standard-webhooks libraries derive from it.
    svix = {k.replace("webhook-", "svix-"): v for k, v in headers().items()}
    assert verify(PAYLOAD, svix, SECRET, now=TIMESTAMP) == {"test": 2432232314}
    del svix["svix-signature"]
    rejects("missing required header 'svix-signature'", PAYLOAD, svix)
    # With both sets present the standard names win.
    both = {**headers(), "svix-signature": DECOY_V1, "svix-id": "x", "svix-timestamp": "1"}
    assert verify(PAYLOAD, both, SECRET, now=TIMESTAMP) == {"test": 2432232314}


@pytest.mark.parametrize("value", ["hello", "", "1614265330.0", "-1614265330", "1e9", "١٢٣"])
def test_malformed_timestamp(value: str) -> None:
    if value == "":
        rejects("missing required header 'webhook-timestamp'", PAYLOAD, headers(timestamp=value))
    else:
        rejects("invalid webhook-timestamp header", PAYLOAD, headers(timestamp=value))


# --- timestamp tolerance ----------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 1, 299, 300, -1, -299, -300])
def test_timestamps_within_tolerance_pass(offset: int) -> None:
    # offset = now - timestamp; exactly the tolerance still passes, as in the reference libraries.
    assert verify(PAYLOAD, headers(), SECRET, now=TIMESTAMP + offset) == {"test": 2432232314}


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (301, "timestamp too old"),
        (300.5, "timestamp too old"),
        (86_400, "timestamp too old"),
        (-301, "timestamp too new"),
        (-300.5, "timestamp too new"),
    ],
)
def test_timestamps_outside_tolerance_fail(offset: float, message: str) -> None:
    with pytest.raises(WebhookVerificationError, match=message):
        verify(PAYLOAD, headers(), SECRET, now=TIMESTAMP + offset)


def test_custom_tolerance() -> None:
    assert verify(PAYLOAD, headers(), SECRET, now=TIMESTAMP + 60, tolerance_s=60)
    with pytest.raises(WebhookVerificationError, match="timestamp too old"):
        verify(PAYLOAD, headers(), SECRET, now=TIMESTAMP + 61, tolerance_s=60)
    with pytest.raises(WebhookVerificationError, match="tolerance_s"):
        verify(PAYLOAD, headers(), SECRET, now=TIMESTAMP, tolerance_s=-1)


def test_non_finite_now_is_refused() -> None:
    # NaN compares False both ways; it must not slip past the tolerance check.
    for now in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(WebhookVerificationError, match="finite"):
            verify(PAYLOAD, headers(), SECRET, now=now)


def test_timestamp_is_checked_before_the_signature() -> None:
    # A replayed webhook is refused as old even if its signature is valid.
    with pytest.raises(WebhookVerificationError, match="timestamp too old"):
        verify(PAYLOAD, headers(), SECRET, now=TIMESTAMP + 3600)


def test_default_now_is_the_clock() -> None:
    # The published vector is from 2021: against the real clock it is far too old.
    with pytest.raises(WebhookVerificationError, match="timestamp too old"):
        verify(PAYLOAD, headers(), SECRET)


# --- raw body bytes ---------------------------------------------------------------------------


def test_str_payload_is_refused_with_the_raw_bytes_advice() -> None:
    error = rejects("payload is a str", PAYLOAD.decode(), headers())
    assert "raw request body bytes" in str(error)
    assert "re-serialised JSON will not match" in str(error)


def test_parsed_json_payload_is_refused() -> None:
    rejects(r"payload is parsed JSON \(dict\).*raw request body bytes", {"test": 1}, headers())
    rejects(r"payload is parsed JSON \(list\)", [1], headers())
    rejects("payload is NoneType", None, headers())


def test_bytearray_and_memoryview_are_raw_bytes() -> None:
    for body in (bytearray(PAYLOAD), memoryview(PAYLOAD)):
        assert verify(body, headers(), SECRET, now=TIMESTAMP) == {"test": 2432232314}  # type: ignore[arg-type]


def test_reserialised_body_gets_the_hint() -> None:
    hdrs = signed(COMPACT)
    hint = "the body may have been re-serialised"
    # Python's default json.dumps (", " and ": "), sorted keys, pretty-printed: all flagged.
    for redump in (
        json.dumps(json.loads(COMPACT)),
        json.dumps(json.loads(COMPACT), sort_keys=True),
        json.dumps(json.loads(COMPACT), indent=2),
    ):
        error = rejects("no matching signature", redump.encode(), hdrs)
        assert hint in str(error)
        assert "verify the raw request body bytes" in str(error)
    # Not flagged: a compact body (wrong secret, or tampered), and bodies that are not JSON.
    for body in (COMPACT.replace(b"1250", b"1251"), b"not json at all", b'"a string"'):
        assert hint not in str(rejects("no matching signature", body, hdrs))


def test_the_hint_never_makes_a_failure_pass() -> None:
    # Signed as pretty JSON (so the body is "non-compact"), verified with a wrong secret: the
    # hint is there, and it is still an error.
    pretty = json.dumps(EVENT, indent=2).encode()
    error = rejects("no matching signature", pretty, signed(pretty), secret=OTHER_SECRET)
    assert "re-serialised" in str(error)
    # And the correct secret still verifies a non-compact body byte-for-byte.
    assert verify(pretty, signed(pretty), SECRET, now=TIMESTAMP) == EVENT


def test_valid_signature_but_body_not_a_json_object() -> None:
    for body, message in [
        (b"not json", "body is not JSON"),
        (b"", "body is not JSON"),
        (b"\xff\xfe\x00", "body is not JSON"),
        (b"[1, 2]", "body is JSON list, not an object"),
        (b"42", "body is JSON int, not an object"),
    ]:
        rejects(message, body, signed(body))


# --- secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    ["whsec_not*base64!", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "MfKQ 9r8G", "whsec_é"],
)
def test_malformed_base64_secret(secret: str) -> None:
    error = rejects("webhook secret is malformed", PAYLOAD, headers(), secret=secret)
    assert secret.removeprefix("whsec_") not in str(error)  # the secret is never echoed
    with pytest.raises(WebhookVerificationError, match="webhook secret is malformed"):
        sign(secret, MSG_ID, TIMESTAMP, PAYLOAD)


@pytest.mark.parametrize("secret", ["", "whsec_", "   "])
def test_empty_secret(secret: str) -> None:
    rejects("webhook secret is empty", PAYLOAD, headers(), secret=secret)


def test_short_secret_is_refused() -> None:
    short = "whsec_" + base64.b64encode(b"x" * 16).decode()
    rejects("decodes to 16 bytes", PAYLOAD, headers(), secret=short)


def test_generate_secret() -> None:
    made = {generate_secret() for _ in range(50)}
    assert len(made) == 50
    for secret in made:
        assert secret.startswith(SECRET_PREFIX)
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        assert 24 <= len(key) <= 32
        header = signature_header([secret], MSG_ID, TIMESTAMP, COMPACT)
        assert verify(COMPACT, headers(header), secret, now=TIMESTAMP) == EVENT


def test_sign_argument_checks() -> None:
    for bad_ts in (-1, True, 1.5, 10**20):
        with pytest.raises(WebhookVerificationError, match="timestamp"):
            sign(SECRET, MSG_ID, bad_ts, PAYLOAD)  # type: ignore[arg-type]
    for bad_id in ("", "msg 1", "msg_é", "msg\n1"):
        with pytest.raises(WebhookVerificationError, match="msg_id"):
            sign(SECRET, bad_id, TIMESTAMP, PAYLOAD)
    with pytest.raises(WebhookVerificationError, match="cannot sign: payload is a str"):
        sign(SECRET, MSG_ID, TIMESTAMP, PAYLOAD.decode())  # type: ignore[arg-type]


# --- properties -------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
JSON_OBJECTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5)
MSG_IDS = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="."),
    min_size=1,
    max_size=40,
)
TIMESTAMPS = st.integers(min_value=0, max_value=2**40)
ENCODINGS = st.sampled_from(
    [{}, {"separators": (",", ":")}, {"indent": 2}, {"ensure_ascii": False, "sort_keys": True}]
)


@settings(max_examples=200, deadline=None)
@given(event=JSON_OBJECTS, encoding=ENCODINGS, msg_id=MSG_IDS, ts=TIMESTAMPS, data=st.data())
def test_round_trip(
    event: dict[str, object],
    encoding: dict[str, object],
    msg_id: str,
    ts: int,
    data: st.DataObject,
) -> None:
    payload = json.dumps(event, **encoding).encode()  # type: ignore[arg-type]
    secret = data.draw(st.sampled_from([SECRET, OTHER_SECRET, RUST_SECRET]))
    hdrs = headers(sign(secret, msg_id, ts, payload), msg_id, ts)
    skew = data.draw(st.integers(min_value=-300, max_value=300))
    assert verify(payload, hdrs, secret, now=ts + skew) == json.loads(payload)


@settings(max_examples=200, deadline=None)
@given(event=JSON_OBJECTS, msg_id=MSG_IDS, ts=TIMESTAMPS, data=st.data())
def test_any_flipped_byte_fails(
    event: dict[str, object], msg_id: str, ts: int, data: st.DataObject
) -> None:
    payload = json.dumps(event, separators=(",", ":")).encode()
    hdrs = headers(sign(SECRET, msg_id, ts, payload), msg_id, ts)
    index = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    mask = data.draw(st.integers(min_value=1, max_value=255))
    tampered = bytearray(payload)
    tampered[index] ^= mask
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(bytes(tampered), hdrs, SECRET, now=ts)
