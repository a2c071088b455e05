"""The README's picture of the console: gpumon replaying the bundled H200 capture on 8 GPUs, opened in
Debian's chromium after `--settle` seconds of history, saved as docs/console.png.

    python -m tools.screenshot_console [--settle 45] [--out docs/console.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=45.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console.png")
    parser.add_argument("--port", type=int, default=19947)
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory() as state:
        daemon = subprocess.Popen([sys.executable, "-m", "gpumon", "run", "--backend", "replay:demo,loop,gpus=8",
                                   "--listen", f"127.0.0.1:{args.port}", "--state-dir", state],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{args.port}/"
            for _ in range(100):
                try:
                    urllib.request.urlopen(url + "-/ready", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            time.sleep(args.settle)
            options = webdriver.ChromeOptions()
            options.binary_location = shutil.which("chromium") or "chromium"
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1100",
                        "--hide-scrollbars"):
                options.add_argument(arg)
            driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)
            try:
                driver.get(url)
                time.sleep(4)
                driver.save_screenshot(str(args.out))
            finally:
                driver.quit()
        finally:
            daemon.terminate()
            daemon.wait(10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
