#!/bin/sh
# A browser for tests/test_report_browser.py: Debian's chromium (the test drives it with Playwright, which the
# `test` extra installs; Playwright's own browser downloads are never used). Never fails the build: without root or
# apt-get it says how to install chromium, and the browser test skips itself.
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "no /usr/bin/chromium and no root with apt-get: the browser test will be skipped;" \
         "install it with: sudo apt-get install chromium"
    exit 0
fi
echo "installing Debian's chromium (for the browser test of report.html) ..."
if apt-get install -y -qq chromium >/dev/null 2>&1 || \
   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1); then
    exit 0
fi
echo "apt-get could not install chromium: the browser test will be skipped"
exit 0
