#!/bin/sh
# Make Fashion-MNIST available: already there, Debian's dataset-fashion-mnist (when root with apt-get),
# or torchvision's download into ~/.cache/selfsup. Usage: scripts/get-data.sh VENV_BIN
set -e
BIN=${1:-.venv/bin}
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || \
   [ -n "$SELFSUP_DATA" -a -d "$SELFSUP_DATA" ] || \
   [ -f "$HOME/.cache/selfsup/fashion-mnist/train-images-idx3-ubyte.gz" ] || \
   [ -f "$HOME/.cache/selfsup/FashionMNIST/raw/train-images-idx3-ubyte.gz" ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's dataset-fashion-mnist ..."
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) && exit 0
    echo "apt-get could not install dataset-fashion-mnist; trying torchvision's download"
fi
"$BIN/selfsup" data fetch fashion-mnist
