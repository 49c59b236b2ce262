"""The bench's progress: one timestamped line on stdout per step, flushed at once."""

import time


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
