"""The redactor: every remembered secret is masked, however many, from any thread."""

from __future__ import annotations

import logging
import secrets
import threading

from engine.secrets import MASK, Redactor


def test_a_remembered_secret_is_masked_wherever_it_sits() -> None:
    redactor = Redactor()
    key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    redactor.remember(key)

    masked = redactor.mask(f"otpauth://x?secret={key}&issuer=y {key}")

    assert key not in masked and masked.count(MASK) == 2
    assert redactor.contains_secret(f"..{key}..")
    assert not redactor.contains_secret(key[:-1])


def test_a_secret_that_begins_another_leaves_no_tail_behind() -> None:
    redactor = Redactor()
    redactor.remember("ABCDEFGHIJ")
    redactor.remember("ABCDEFGHIJKLMNOP")

    assert redactor.mask("x ABCDEFGHIJKLMNOP y ABCDEFGHIJ") == f"x {MASK} y {MASK}"


def test_a_short_secret_is_masked_too() -> None:
    redactor = Redactor()
    redactor.remember("pa55")

    assert redactor.mask("the pa55 word") == f"the {MASK} word"


def test_among_twenty_thousand_secrets_each_one_is_found() -> None:
    redactor = Redactor()
    known = [secrets.token_urlsafe(30) for _ in range(20_000)]
    for value in known:
        redactor.remember(value)

    picked = known[::4_000]
    masked = redactor.mask(" and ".join(picked))

    assert masked == " and ".join([MASK] * len(picked))
    assert not redactor.contains_secret(secrets.token_urlsafe(30))


def test_secrets_remembered_by_one_thread_while_another_logs_break_nothing() -> None:
    redactor = Redactor()
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "x" * 200, None, None)
    errors: list[BaseException] = []
    done = threading.Event()

    def remember() -> None:
        for _ in range(2_000):
            redactor.remember(secrets.token_hex(16))
        done.set()

    def read() -> None:
        try:
            while not done.is_set():
                redactor.filter(record)
                redactor.contains_secret("y" * 200)
        except BaseException as err:  # noqa: BLE001 - the assertion reports it
            errors.append(err)

    threads = [threading.Thread(target=remember), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
