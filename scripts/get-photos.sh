#!/bin/sh
# Real colour photographs for the colour-only parts (chromatic aberration, the shortcut study): Debian's
# mate-backgrounds puts 12 large nature photographs in /usr/share/backgrounds/mate/nature. Any folder of your own
# photos works the same way: --data PATH --set data.crops_per_image=100.
set -e
DIR=/usr/share/backgrounds/mate/nature
if [ -d "$DIR" ]; then
    echo "photos: $DIR"
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's mate-backgrounds ..."
    (apt-get install -y -qq mate-backgrounds >/dev/null 2>&1 || \
     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq mate-backgrounds >/dev/null 2>&1)) && \
     echo "photos: $DIR" && exit 0
fi
echo "no photos at $DIR: install Debian's mate-backgrounds (sudo apt-get install mate-backgrounds) or use a folder of your own photos" >&2
exit 1
