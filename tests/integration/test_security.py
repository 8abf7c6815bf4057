"""A running receiver under attack: who gets in, where files may go, what a peer can hold.

Every test drives a real `scanxfer receive` over real sockets.  A refusal is checked four
ways: the client is turned away, nothing lands in incoming or the partial area, the log
names the peer, and a good sender connected beforehand goes on storing files meanwhile.
Bad clients connect from 127.0.0.1 and good ones from other loopback addresses, since the
brake on failed handshakes works per address.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scanxfer import protocol as p
from scanxfer.keys import KeyFile, keys_path
from scanxfer.protocol.auth import new_secret
from scanxfer.tls import format_fingerprint, load_identity

from .attack import (
    LOG_SECONDS,
    StartReceiver,
    assert_only_good_files,
    digest,
    logged,
    scanxfer,
    tls_connect,
)
from .faultproxy import FaultProxy
from .harness import (
    GIVE_UP_SECONDS,
    TEST_SENDER,
    assert_identical,
    count_matches,
    credentials,
    send_once,
    sender_config,
    write_scan,
)
from .rawclient import GoodSender, RawSender, address_of, connect, read_frames

# --- authentication ------------------------------------------------------------------------


def test_a_sender_without_a_key_exits_2_and_never_connects(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    receiver = start_receiver()
    scans = tmp_path / "scans"
    write_scan(scans / "a.npy", (8,), seed=1)
    sender = send_once(sender_config(tmp_path / "sender.yaml", receiver.port, scans, key="null"))
    assert sender.process.returncode == 2, sender.log
    assert "this sender has no key yet" in sender.log
    assert "scanxfer pair" in sender.log  # says how to get one
    assert "connected" not in receiver.log
    assert receiver.stored_files() == []


@pytest.mark.parametrize(
    ("after_hello", "code", "reason"),
    [
        (b"", p.ErrorCode.TIMEOUT, "handshake not completed in time"),
        (b"\xff" * 64, p.ErrorCode.PROTOCOL_ERROR, "not a scanxfer handshake: unknown frame"),
        (
            p.encode(p.Offer(1, "x.npy", 1, 0, bytes(16))),
            p.ErrorCode.PROTOCOL_ERROR,
            "not a scanxfer handshake: Offer while the connection is handshake",
        ),
        (
            bytes([p.FrameType.AUTHENTICATE, 0, 0, 0, 3]) + b"abc",
            p.ErrorCode.PROTOCOL_ERROR,
            "not a scanxfer handshake: AUTHENTICATE frame is too short",
        ),
    ],
    ids=["silence", "garbage", "offer-before-proof", "short-proof"],
)
def test_a_client_that_does_not_prove_a_key_after_hello_is_refused(
    start_receiver: StartReceiver, after_hello: bytes, code: p.ErrorCode, reason: str
) -> None:
    receiver = start_receiver()
    good = GoodSender(receiver.port)
    sock = tls_connect(receiver.port)
    sock.sendall(p.encode(p.Hello(TEST_SENDER)) + after_hello)
    events = read_frames(sock)
    assert isinstance(events[0], p.Challenge), events
    assert isinstance(events[-1], p.Error) and events[-1].code is code, events
    logged(receiver, f"{address_of(sock)}: handshake failed: {reason}")
    assert_only_good_files(receiver, good)


@pytest.mark.parametrize(
    ("name", "secret", "reason"),
    [
        (TEST_SENDER, new_secret(), f"wrong key for {TEST_SENDER!r}"),
        ("stranger", None, "no key was issued to 'stranger'"),
    ],
    ids=["wrong-key", "unknown-name"],
)
def test_a_wrong_key_or_an_unknown_name_is_refused(
    start_receiver: StartReceiver, name: str, secret: str | None, reason: str
) -> None:
    receiver = start_receiver()
    good = GoodSender(receiver.port)
    intruder = RawSender(receiver.port, name=name, secret=secret, authenticate=False)
    answer = intruder.handshake()
    assert isinstance(answer, p.Error) and answer.code is p.ErrorCode.AUTH_FAILED, answer
    assert read_frames(intruder.sock) == []  # and the connection is closed
    logged(receiver, f"{intruder.address}: handshake failed: {reason}")
    assert_only_good_files(receiver, good)


def test_a_revoked_key_is_refused_and_its_open_connection_closed_without_a_restart(
    start_receiver: StartReceiver,
) -> None:
    receiver = start_receiver()
    other = KeyFile(keys_path(receiver.state)).add("other-pc")
    good = GoodSender(receiver.port, name="other-pc", secret=other)
    victim = RawSender(receiver.port, source="127.0.0.2")
    revoke = scanxfer("keys", "revoke", TEST_SENDER, "--state-dir", str(receiver.state))
    assert revoke.returncode == 0, revoke.stderr
    victim.sock.settimeout(LOG_SECONDS)  # a give-up bound: it takes a tick of the main loop
    assert read_frames(victim.sock) == []  # closed by the receiver, not by a timeout here
    logged(receiver, f"{victim.address} ({TEST_SENDER}): its key was revoked; closing")
    again = RawSender(receiver.port, authenticate=False)
    answer = again.handshake()
    assert isinstance(answer, p.Error) and answer.code is p.ErrorCode.AUTH_FAILED, answer
    logged(receiver, f"{again.address}: handshake failed: the key of {TEST_SENDER!r} was revoked")
    assert count_matches("listening on", receiver.log) == 1  # never restarted
    assert_only_good_files(receiver, good)


def test_a_key_added_while_running_works_without_a_restart(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    receiver = start_receiver()
    issued = scanxfer(
        "keys", "add", "lab-pc", "--state-dir", str(receiver.state),
        "--address", f"127.0.0.1:{receiver.port}",
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    config = tmp_path / "lab-pc.yaml"
    scans = tmp_path / "scans"
    config.write_text(f"watch_dir: {scans}\nstate_dir: {tmp_path / 'lab-state'}\n")
    paired = scanxfer("pair", issued.stdout.strip(), "-c", str(config))
    assert paired.returncode == 0, paired.stderr
    write_scan(scans / "run" / "a.npy", (64,), seed=3)
    sender = send_once(config)
    assert sender.process.returncode == 0, sender.log
    assert_identical(scans, receiver.incoming)
    logged(receiver, "sender 'lab-pc' connected")
    assert count_matches("listening on", receiver.log) == 1


def test_a_receiver_with_another_certificate_gets_nothing_from_the_sender(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    """The impostor even holds the sender's verifier (a stolen keys.json): only the pin stops it."""
    real = start_receiver()
    impostor = start_receiver("impostor", own_identity=True)
    fake = load_identity(impostor.state).fingerprint
    assert fake != credentials().fingerprint
    scans = tmp_path / "scans"
    write_scan(scans / "a.npy", (64,), seed=4)
    with FaultProxy(impostor.port) as proxy:
        tls_connect(proxy.port).close()  # a bare TLS handshake, to count its bytes
        assert proxy.link(1).closed.wait(GIVE_UP_SECONDS)
        sender = send_once(sender_config(tmp_path / "fooled.yaml", proxy.port, scans))
        assert sender.process.returncode == 3, sender.log
        presented, pinned = format_fingerprint(fake), format_fingerprint(credentials().fingerprint)
        assert f"presented certificate {presented}, not the pinned {pinned}" in sender.log
        assert proxy.connections == 2  # no retry: only a person can fix this
        assert proxy.link(2).closed.wait(GIVE_UP_SECONDS)
        # Not one byte beyond the TLS handshake: no HELLO, no name, no proof.
        assert proxy.link(2).upstream == proxy.link(1).upstream
    assert "connected" not in impostor.log and "handshake failed" not in impostor.log
    assert impostor.stored_files() == [] and impostor.partials() == []
    direct = send_once(sender_config(tmp_path / "direct.yaml", real.port, scans))
    assert direct.process.returncode == 0, direct.log
    assert_identical(scans, real.incoming)


def test_a_replayed_handshake_is_refused(start_receiver: StartReceiver) -> None:
    receiver = start_receiver(tls="false")
    good = GoodSender(receiver.port, tls=False)
    recorded = RawSender(receiver.port, tls=False, source="127.0.0.2")
    assert isinstance(recorded.send_file("replayed.npy", b"recorded payload"), p.Ack)
    recorded.send(p.Bye())
    recorded.close()
    (receiver.incoming / "replayed.npy").unlink()  # a replay that got in would store it again
    replay = connect(receiver.port)
    replay.sendall(recorded.sent)
    events = read_frames(replay)
    assert [type(event) for event in events] == [p.Challenge, p.Error], events
    assert events[1].code is p.ErrorCode.AUTH_FAILED  # type: ignore[union-attr]
    logged(receiver, f"{address_of(replay)}: handshake failed: wrong key for {TEST_SENDER!r}")
    assert_only_good_files(receiver, good)


@pytest.mark.parametrize(
    ("receiver_tls", "refusal"),
    [
        ("true", r"handshake failed: no TLS handshake"),
        ("false", r"handshake failed: not a scanxfer handshake: .*\(a TLS client: this receiver"),
    ],
    ids=["plain-sender-tls-receiver", "tls-sender-plain-receiver"],
)
def test_a_sender_with_the_other_tls_setting_is_refused_with_a_hint(
    tmp_path: Path, start_receiver: StartReceiver, receiver_tls: str, refusal: str
) -> None:
    receiver = start_receiver(tls=receiver_tls)
    good = GoodSender(receiver.port, tls=receiver_tls == "true")
    scans = tmp_path / "scans"
    write_scan(scans / "a.npy", (64,), seed=5)
    sender_tls = "false" if receiver_tls == "true" else "true"
    config = sender_config(tmp_path / "sender.yaml", receiver.port, scans, tls=sender_tls)
    sender = send_once(config)
    assert sender.process.returncode == 3, sender.log
    assert "tls: must match" in sender.log
    assert receiver.child is not None
    receiver.child.wait_for(r"127\.0\.0\.1:\d+: " + refusal, GIVE_UP_SECONDS)
    assert_only_good_files(receiver, good)


def test_repeated_failures_from_one_address_are_cut_off_at_once(
    start_receiver: StartReceiver,
) -> None:
    receiver = start_receiver(max_auth_failures="3")
    good = GoodSender(receiver.port)
    outcomes = [wrong_key_attempt(receiver.port) for _ in range(8)]
    assert outcomes == ["AUTH_FAILED"] * 3 + ["closed"] * 5
    logged(receiver, "3 failures within a minute from 127.0.0.1")
    # The brake holds the address, whatever key it brings; other addresses are not affected.
    with pytest.raises(OSError):
        RawSender(receiver.port)
    elsewhere = RawSender(receiver.port, source="127.0.0.2").send_file("late.npy", b"late")
    assert isinstance(elsewhere, p.Ack)
    logged(receiver, "received late.npy")  # so every earlier line has been read too
    assert count_matches(r"127\.0\.0\.1:\d+: handshake failed", receiver.log) == 3
    assert_only_good_files(receiver, good, "late.npy")


def wrong_key_attempt(port: int) -> str:
    """One handshake from 127.0.0.1 with a made-up key: the error code, or 'closed'."""
    try:
        answer = RawSender(port, secret=new_secret(), authenticate=False).handshake()
    except OSError:
        return "closed"
    return answer.code.name if isinstance(answer, p.Error) else repr(answer)


# --- where files may go ----------------------------------------------------------------------


def test_a_directory_swapped_for_a_symlink_mid_transfer_is_not_followed(
    start_receiver: StartReceiver, outside: Path
) -> None:
    receiver = start_receiver()
    good = GoodSender(receiver.port)
    (receiver.incoming / "sub").mkdir()
    client = RawSender(receiver.port)
    payload = b"written after the swap"
    client.send(p.Offer(1, "sub/x.npy", len(payload), 0, digest(payload)))
    assert isinstance(client.next_event(), p.Ready)  # the name was fine when offered
    (receiver.incoming / "sub").rename(receiver.incoming / "moved")
    (receiver.incoming / "sub").symlink_to(outside)
    client.send(p.DataHeader(1, 0, len(payload)), payload)
    answer = client.next_event()
    assert isinstance(answer, p.Nack) and answer.reason is p.NackReason.BAD_NAME, answer
    assert list(outside.iterdir()) == []
    logged(receiver, f"{client.address} ({TEST_SENDER}): sub/x.npy not stored: ")
    (receiver.incoming / "sub").unlink()
    (receiver.incoming / "moved").rmdir()  # empty: nothing was stored there either
    assert_only_good_files(receiver, good)


@pytest.mark.parametrize(
    ("settings", "planted", "offered"),
    [
        ({}, "real/link", "real/link/x.npy"),
        ({"per_sender_dirs": "true"}, TEST_SENDER, "x.npy"),
        ({"per_sender_dirs": "true"}, f"{TEST_SENDER}/run", "run/x.npy"),
    ],
    ids=["nested", "sender-dir", "inside-sender-dir"],
)
def test_a_symlinked_directory_planted_in_incoming_is_never_followed(
    start_receiver: StartReceiver,
    outside: Path,
    settings: dict[str, str],
    planted: str,
    offered: str,
) -> None:
    receiver = start_receiver(**settings)
    other = KeyFile(keys_path(receiver.state)).add("other-pc")
    good = GoodSender(receiver.port, name="other-pc", secret=other)
    link = receiver.incoming / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    client = RawSender(receiver.port)
    answer = client.send_file(offered, b"payload")
    assert isinstance(answer, p.Nack) and answer.reason is p.NackReason.BAD_NAME, answer
    assert "symlink" in answer.message
    assert list(outside.iterdir()) == []
    logged(receiver, f"{client.address} ({TEST_SENDER}): refused {offered!r}")
    link.unlink()
    assert_only_good_files(receiver, good)
