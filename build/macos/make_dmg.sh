#!/bin/sh
# Build MetaScope.app and a drag-to-Applications .dmg on a macOS release machine.
#
#   build/macos/make_dmg.sh viewer      # or: full
#
# Needs: macOS 11+, Python 3.11 from python.org (universal2) or Homebrew, Xcode command-line tools
# (hdiutil, codesign). Optional: SIGN_IDENTITY="Developer ID Application: ..." and a notarytool
# keychain profile NOTARY_PROFILE for Gatekeeper-clean distribution. Details: build/macos/README.md.
set -eu

FLAVOUR="${1:-viewer}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-.venv/bin/python}"

if [ ! -x "$PY" ]; then
    python3 -m venv .venv
    .venv/bin/pip install -e ".[build]"
fi
VERSION="$("$PY" -c 'import engine; print(engine.__version__)')"

"$PY" build/make_installer.py --flavour "$FLAVOUR"
APP="build/out/$FLAVOUR/MetaScope.app"
test -d "$APP"

# The installed app must pass its own self-test before it is shipped.
"$APP/Contents/MacOS/metascope" selftest

if [ -n "${SIGN_IDENTITY:-}" ]; then
    codesign --force --deep --options runtime --timestamp --sign "$SIGN_IDENTITY" "$APP"
    codesign --verify --deep --strict "$APP"
fi

STAGE="build/_work/dmg-$FLAVOUR"
rm -rf "$STAGE"
mkdir -p "$STAGE"
cp -R "$APP" "$STAGE/"
ln -s /Applications "$STAGE/Applications"
DMG="build/out/MetaScope-$VERSION-$FLAVOUR.dmg"
rm -f "$DMG"
hdiutil create -volname "MetaScope $VERSION" -srcfolder "$STAGE" -fs HFS+ -format UDZO -ov "$DMG"
rm -rf "$STAGE"

if [ -n "${SIGN_IDENTITY:-}" ]; then
    codesign --force --timestamp --sign "$SIGN_IDENTITY" "$DMG"
    if [ -n "${NOTARY_PROFILE:-}" ]; then
        xcrun notarytool submit "$DMG" --keychain-profile "$NOTARY_PROFILE" --wait
        xcrun stapler staple "$DMG"
    fi
fi
echo "built $DMG"
