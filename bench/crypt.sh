#!/usr/bin/env bash
# Sector encryption throughput, tessera beside the kernel in one run: tessera's aes-xts-plain64
# (512-bit key, one thread, 4 KiB and 64 KiB requests, 512- and 4096-byte crypt sectors; the
# xts bench of tessera-crypt) and the kernel's, as `cryptsetup benchmark -c aes-xts-plain64
# -s 512` measures it through AF_ALG (one thread, 512-byte sectors). Prints both and the
# tessera/kernel ratios (higher is better for tessera). Where openssl is installed, its
# AES-256-XTS on this machine is printed too (one data unit per call, so `-bytes 512` and
# `-bytes 4096` stand for the two sector sizes): what this CPU's AES instructions allow in
# user space. Not a test: compare side by side.
#
# cryptsetup needs the kernel's AF_ALG skcipher interface (algif_skcipher). Where this
# machine's kernel lacks it, the kernel's figure comes from the kernel lab VM instead, which
# runs under software emulation: that figure (and so the ratio) then says nothing about real
# hardware, and is printed only to show the command works.
#
#   bench/crypt.sh               # SECONDS per tessera case: 1
#   SECONDS_PER_CASE=3 bench/crypt.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_CASE=${SECONDS_PER_CASE:-1}
LAB=${KERNEL_LAB:-../shared/kernel-lab/vm-run}
[ -x "$LAB" ] || LAB=/work/shared/kernel-lab/vm-run
DIR=${BENCH_DIR:-target/crypt-bench}
mkdir -p "$DIR"

echo "== tessera (tessera-cipher's SectorCipher, through the crypt target's call)"
tessera_out=$(cargo bench -q -p tessera-crypt --bench xts -- "$SECONDS_PER_CASE" 2>/dev/null)
echo "$tessera_out"

echo
echo "== kernel (cryptsetup benchmark -c aes-xts-plain64 -s 512)"
where=host
if ! kernel_out=$(cryptsetup benchmark -c aes-xts-plain64 -s 512 2>&1) ||
    ! grep -q 'MiB/s' <<<"$kernel_out"; then
    echo "$kernel_out" | sed 's/^/  host: /'
    if [ -x "$LAB" ]; then
        where="kernel lab VM (software emulation: not comparable)"
        echo "  running it in the kernel lab instead, beside tessera's bench in the same VM"
        bin=$(cargo bench -q -p tessera-crypt --bench xts --no-run --message-format=json 2>/dev/null |
            jq -r 'select(.executable != null) | .executable' | tail -1)
        both=$("$LAB" -w "$DIR" -- "modprobe -q algif_skcipher; cryptsetup benchmark -c aes-xts-plain64 -s 512; echo '== tessera in the VM'; $bin 1" 2>&1) || true
        kernel_out=$(sed '/== tessera in the VM/,$d' <<<"$both")
        vm_tessera=$(sed -n '/== tessera in the VM/,$p' <<<"$both" | grep -E '^(encrypt|decrypt) ' || true)
    else
        where=none
    fi
fi
echo "$kernel_out" | grep -E 'Algorithm|aes-xts|Tests are|not available' || echo "$kernel_out" | tail -5
echo "  (measured on: $where)"

# "aes-xts   512b   1234.5 MiB/s   1300.2 MiB/s": encryption, then decryption.
read -r k_enc k_dec < <(awk '/aes-xts/ && /MiB\/s/ {
    n = 0; for (i = 1; i <= NF; i++) if ($(i+1) == "MiB/s") v[n++] = $i
    if (n >= 2) { print v[0], v[1]; exit } }' <<<"$kernel_out") || true

ossl_512="" ossl_4096=""
if command -v openssl >/dev/null; then
    echo
    echo "== openssl speed -evp aes-256-xts (this machine, user space, encryption)"
    ossl=$(openssl speed -evp aes-256-xts -bytes 512 -seconds "$SECONDS_PER_CASE" 2>/dev/null | tail -1
        openssl speed -evp aes-256-xts -bytes 4096 -seconds "$SECONDS_PER_CASE" 2>/dev/null | tail -1)
    # "AES-256-XTS  1234567.89k": thousands of bytes per second.
    read -r ossl_512 ossl_4096 < <(awk '/XTS/ { v = $NF; sub(/k$/, "", v); printf "%s ", v * 1000 / 1048576 } END { print "" }' <<<"$ossl")
    printf '%-28s %12.1f MiB/s\n' "512-byte units" "$ossl_512" "4096-byte units" "$ossl_4096"
    echo "tessera/openssl: $(grep -E '^encrypt 64K sector 512 ' <<<"$tessera_out" |
        awk -v o="$ossl_512" '{ printf "%.2f", $NF / o }') (512-byte sectors), $(grep -E '^encrypt 64K sector 4096 ' <<<"$tessera_out" |
        awk -v o="$ossl_4096" '{ printf "%.2f", $NF / o }') (4096-byte sectors), 64 KiB encrypt"
fi

echo
if [ -z "${k_enc:-}" ]; then
    echo "no kernel figure; no ratios"
    exit 0
fi
printf '%-28s %12s %12s %8s\n' "tessera case" "tessera" "kernel" "ratio"
while read -r op size _ sector mibs; do
    case $op in encrypt) k=$k_enc ;; decrypt) k=$k_dec ;; *) continue ;; esac
    printf '%-28s %12.1f %12.1f %8.2f\n' "$op $size sector $sector" "$mibs" "$k" \
        "$(echo "$mibs / $k" | bc -l)"
done < <(grep -E '^(encrypt|decrypt) ' <<<"$tessera_out")
[ "$where" = host ] || echo "(kernel figure from an emulated VM: the ratios mean nothing for real hardware)"
if [ -n "${vm_tessera:-}" ]; then
    echo
    echo "== the same VM, tessera and the kernel side by side (both emulated: only this ratio compares like with like)"
    printf '%-28s %12s %12s %8s\n' "tessera case (in the VM)" "tessera" "kernel" "ratio"
    while read -r op size _ sector mibs; do
        case $op in encrypt) k=$k_enc ;; decrypt) k=$k_dec ;; *) continue ;; esac
        printf '%-28s %12.1f %12.1f %8.2f\n' "$op $size sector $sector" "$mibs" "$k" \
            "$(echo "$mibs / $k" | bc -l)"
    done <<<"$vm_tessera"
fi
