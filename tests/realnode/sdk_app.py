"""The app the real-node tests deploy: a bounded loop of official openai SDK calls, nothing tokenbudget-specific.

Its base URL comes from the environment the webhook injected (OPENAI_BASE_URL → the sidecar). One JSON line
per call on stdout: the test reads them with `kubectl logs`, as a user would. Stops calling after CALLS calls
or STOP_AFTER_429 refusals in a row (each after the Retry-After it was given, at most 2 s),
then idles so the pod stays up for the test to inspect or delete.
"""

import json
import os
import time

import openai

client = openai.OpenAI(api_key="sk-test-not-a-real-key", max_retries=0, timeout=30)
calls = int(os.environ.get("CALLS", "50"))
stop_after = int(os.environ.get("STOP_AFTER_429", "6"))
interval = float(os.environ.get("INTERVAL_S", "0.2"))
print(json.dumps({"event": "start", "base_url": os.environ.get("OPENAI_BASE_URL")}), flush=True)
refused = 0
for i in range(calls):
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Say hello number {i}."}],
            max_tokens=16,
        )
        done = raw.parse()
        refused = 0
        print(json.dumps({"event": "call", "i": i, "status": 200, "id": done.id,
                          "total_tokens": done.usage.total_tokens if done.usage else None,
                          "stage": raw.headers.get("x-tokenbudget-stage")}), flush=True)
    except openai.RateLimitError as exc:
        refused += 1
        print(json.dumps({"event": "call", "i": i, "status": 429, "type": type(exc).__name__,
                          "retry_after": exc.response.headers.get("retry-after")}), flush=True)
        if refused >= stop_after:
            break
        # Back off as the refusal says (a lease running low refills within a lease round; a blocked budget
        # keeps refusing), bounded so the loop stays short.
        time.sleep(min(float(exc.response.headers.get("retry-after") or 1), 2.0))
    except openai.APIError as exc:
        print(json.dumps({"event": "call", "i": i, "status": getattr(exc, "status_code", None),
                          "type": type(exc).__name__, "error": str(exc)[:200]}), flush=True)
    time.sleep(interval)
print(json.dumps({"event": "done"}), flush=True)
while True:
    time.sleep(3600)
