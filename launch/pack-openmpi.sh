#!/usr/bin/env bash
# Copies this machine's Open MPI (Debian's 4.1: mpirun, orted, its libraries and plugins, help
# files, the PMIx it uses, and every library they load beyond the C runtime) into DEST as a
# relocatable tree, for a machine without Open MPI (the bare GPU image). Use it with:
#   OPAL_PREFIX=DEST PMIX_PREFIX=DEST/lib/x86_64-linux-gnu/pmix2 \
#   LD_LIBRARY_PATH=DEST/lib:DEST/lib/x86_64-linux-gnu/openmpi/lib DEST/bin/mpirun -np 2 ...
# (launch/gpu_check.py does). Checked here with the system's Open MPI and PMIx folders
# moved away: a two-rank test ran from the copy alone.
#   launch/pack-openmpi.sh DEST
set -euo pipefail
dest=${1:?usage: pack-openmpi.sh DEST}
multiarch=x86_64-linux-gnu
ompi=/usr/lib/$multiarch/openmpi
pmix=/usr/lib/$multiarch/pmix2
[ -d "$ompi" ] || { echo "pack-openmpi.sh: no Open MPI at $ompi" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest/bin" "$dest/lib/$multiarch" "$dest/share"
cp -a "$ompi" "$dest/lib/$multiarch/"
[ -d "$pmix" ] && cp -a "$pmix" "$dest/lib/$multiarch/"
rm -rf "$dest/lib/$multiarch/openmpi/include" "$dest/lib/$multiarch/pmix2/include"
# One node over shared memory and TCP is all the checks use: the network fabrics' plugins
# (UCX, libfabric, PSM, verbs) and OpenSHMEM stay behind, with the libraries they would pull.
find "$dest/lib/$multiarch/openmpi" \( -name '*ucx*' -o -name '*ofi*' -o -name '*psm*' \
  -o -name '*openib*' -o -name '*uct*' -o -name '*verbs*' -o -name '*oshmem*' \
  -o -name 'mca_spml_*' -o -name 'mca_sshmem_*' -o -name 'mca_scoll_*' -o -name 'mca_atomic_*' \) \
  -exec rm -rf {} +
cp -a /usr/share/openmpi "$dest/share/"
cp -L "$(command -v orterun)" "$dest/bin/mpirun"
cp -L "$(command -v orted)" "$dest/bin/orted"
# Every library the launcher, daemon, libraries and plugins load, except the C runtime (the
# GPU machine has its own, newer and compatible) and CUDA's.
for f in "$dest/bin/"* $(find "$dest/lib" -name '*.so*' -type f); do ldd "$f" 2>/dev/null || true; done |
  awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -Ev '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+)\.so|ld-linux|/usr/local/cuda' |
  while read -r lib; do [ -e "$dest/lib/$(basename "$lib")" ] || cp -L "$lib" "$dest/lib/"; done
echo "pack-openmpi.sh: $(du -sh "$dest" | cut -f1) in $dest"
