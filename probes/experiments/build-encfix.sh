#!/usr/bin/env bash
# Experiment, not the pinned probe: smb2 0.39.0 plus smb2-0.39.0-cap-encryption.patch
# (advertise SMB2_GLOBAL_CAP_ENCRYPTION in NEGOTIATE), to show whether that is all that
# keeps smb2 from a Samba 4.17 share with `server smb encrypt = required`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/smb2-0.39.0 | head -1) # present after building ../smb2-probe
if [[ ! -d smb2-0.39.0-encfix ]]; then
    cp -r "$src" smb2-0.39.0-encfix
    patch -d smb2-0.39.0-encfix -p1 <smb2-0.39.0-cap-encryption.patch
fi
mkdir -p encfix-probe
cp -r ../smb2-probe/src ../smb2-probe/holder.py ../smb2-probe/Cargo.lock encfix-probe/
sed -e 's/name = "smb2-probe"/name = "smb2-encfix-probe"/' ../smb2-probe/Cargo.toml >encfix-probe/Cargo.toml
printf '\n[patch.crates-io]\nsmb2 = { path = "../smb2-0.39.0-encfix" }\n' >>encfix-probe/Cargo.toml
cd encfix-probe && CARGO_TARGET_DIR=../target-encfix cargo build --release
