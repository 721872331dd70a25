"""One load client of bench/online_bench.py, run as its own process.

Standard library only, so starting one costs milliseconds and no client imports TensorFlow while
the others are measured. It waits for the common start time, sends requests back to back over one
keep-alive connection until the end time, and prints the latencies (seconds) as one JSON list.

    python bench/_load_client.py PORT TOKEN_FILE USERS DAY START_AT SECONDS SEED
"""

from __future__ import annotations

import http.client
import json
import random
import sys
import time


def body(rng: random.Random, users: int, day: str, post_events: bool) -> bytes:
    """A request for a random one of ``users`` users; with ``post_events``, 3 views on ``day``."""
    payload: dict = {"user_id": f"u{rng.randrange(users)}"}
    if post_events:
        payload["events"] = [{"item_id": f"i{rng.randrange(10**6)}", "category_id": f"c{rng.randrange(200)}",
                              "behavior": "view", "ts": f"{day}T{h:02d}:15:00Z"} for h in (8, 9, 10)]
    return json.dumps(payload).encode()


def post(conn: http.client.HTTPConnection, token: str, data: bytes) -> float:
    t0 = time.perf_counter()
    conn.request("POST", "/v1/score", data, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    answer = conn.getresponse()
    answer.read()
    if answer.status != 200:
        raise RuntimeError(f"POST /v1/score answered {answer.status}")
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    port, token_file, users, day, start_at, seconds, seed = argv
    token = open(token_file).read().strip()
    rng = random.Random(int(seed))
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
    time.sleep(max(0.0, float(start_at) - time.time()))
    deadline = float(start_at) + float(seconds)
    times = []
    while time.time() < deadline:
        times.append(post(conn, token, body(rng, int(users), day, rng.random() < 0.5)))
    conn.close()
    print(json.dumps(times))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
