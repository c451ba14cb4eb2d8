#!/usr/bin/env python3
"""A kiosk application's client of the station agent, with Python's standard library only.

Submits a receipt (retried safely with the same key), a batch of lines, shows that a card
number is refused, and reads the tap feed from a known position. docs/kiosk.md explains it;
CI runs it against `station run --sim` (.ci/kiosk-example.sh).

Usage: kiosk_client.py [SOCKET]   (default /run/station/station.sock)
"""
import http.client
import json
import socket
import sys
import time
import uuid


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the agent's unix socket."""

    def __init__(self, path, timeout=10):
        super().__init__("station", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def request(sock, method, path, body=None, headers=None):
    """One request; returns (status, headers, body bytes)."""
    conn = UnixHTTPConnection(sock)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def submit(sock, key, rtype, data, attempts=5):
    """Submits one record, retrying with the same key until it is answered.

    A retry after a timeout or a broken connection is safe: the agent answers the record the
    key already made (repeat: true) instead of recording it twice.
    """
    body = json.dumps({"type": rtype, "data": data}).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    for attempt in range(attempts):
        try:
            status, hdrs, raw = request(sock, "POST", "/api/v0/records", body, headers)
        except OSError:  # agent restarting, socket broken, timeout: retry with the same key
            time.sleep(min(2 ** attempt, 30))
            continue
        if status == 200:
            return json.loads(raw)
        if status in (429, 503, 507):  # back-pressure: wait as told, keep the key
            time.sleep(int(hdrs.get("Retry-After", "5")))
            continue
        err = json.loads(raw)  # 400, 409, 413, 422: fix the record, do not retry as is
        raise ValueError("%d %s: %s" % (status, err.get("code"), err["error"]))
    raise TimeoutError("the agent did not answer: the record is kept by the app and retried later")


def submit_batch(sock, records):
    """Submits up to 100 records (each a dict with key, type, data) in one transaction."""
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    status, _, raw = request(sock, "POST", "/api/v0/records:batch", body,
                             {"Content-Type": "application/x-ndjson"})
    return status, [json.loads(line) for line in raw.splitlines() if line.strip()]


def taps_after(sock, after, follow=False, timeout=10):
    """Yields tap-feed lines after seq `after` (and, with follow, new ones as they come)."""
    conn = UnixHTTPConnection(sock, timeout=timeout)
    path = "/api/v0/events?type=card.tap&after=%d%s" % (after, "&follow=1" if follow else "")
    conn.request("GET", path)
    resp = conn.getresponse()
    try:
        for line in resp:
            if line.strip():
                yield json.loads(line)
    finally:
        conn.close()


def main():
    sock = sys.argv[1] if len(sys.argv) > 1 else "/run/station/station.sock"
    txn = "receipt-" + uuid.uuid4().hex  # one key per transaction, kept with it until answered

    first = submit(sock, txn, "kiosk.receipt", {"amount": "12.50", "service": "subsidy"})
    again = submit(sock, txn, "kiosk.receipt", {"amount": "12.50", "service": "subsidy"})
    assert first["ok"] and not first.get("repeat"), first
    assert again["repeat"] and again["id"] == first["id"] and again["seq"] == first["seq"], again
    print("recorded %s seq %d; the retry answered the same record" % (first["id"], first["seq"]))

    try:  # a synthetic test number that passes Luhn: refused, and never stored
        submit(sock, txn + "-pan", "kiosk.receipt", {"note": "6228 4800 0000 0007"})
        raise AssertionError("a card number was accepted")
    except ValueError as e:
        assert "card_number" in str(e), e
        print("card number refused:", e)

    status, lines = submit_batch(sock, [
        {"key": "%s-line-%d" % (txn, i), "type": "kiosk.receipt.line",
         "data": {"line": i, "sku": "A%d" % i, "qty": 1}}
        for i in range(3)])
    assert status == 200 and all(l["ok"] for l in lines), (status, lines)
    print("batch recorded: seq", ", ".join(str(l["seq"]) for l in lines))

    seen = 0
    for ev in taps_after(sock, 0):  # from the start of what the station still has
        if "missed" in ev:
            print("no longer on the station: seq %(from)d to %(to)d" % ev["missed"])
            continue
        seen = ev["seq"]
        print("tap seq %d token %s… %s" % (ev["seq"], ev["card"]["token"][:12], ev["card"].get("masked", "")))
    print("last tap seen: seq %d (resume with after=%d)" % (seen, seen))


if __name__ == "__main__":
    main()
