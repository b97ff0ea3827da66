# Preloads tcmalloc for jobs on the CPU; sourced by local.sh, test.sh and study.sh.
# XLA:CPU allocates each step's large temporaries anew, and glibc maps every one over 32 MB
# fresh from the kernel, so each step page-faults its working set in again (~50,000 faults a
# step at the Shakespeare and bytes shapes). tcmalloc keeps that memory, handing a free span
# back only now and then (about one 64 MB call in 20 still faults), so the Shakespeare step of
# local.sh ran ~1.25x faster, the bytes benchmark step ~1.15x.
# PRIME_JAX_ALLOCATOR=system keeps glibc's malloc. setup_env.sh installs the library.
if [ "${PRIME_JAX_ALLOCATOR:-tcmalloc}" != system ]; then
  PRIME_JAX_TCMALLOC="$( { ldconfig -p || /sbin/ldconfig -p || true; } 2>/dev/null |
    awk '$1 == "libtcmalloc_minimal.so.4" && !found {print $NF; found = 1}')"
  if [ -n "$PRIME_JAX_TCMALLOC" ]; then
    case ":${LD_PRELOAD:-}:" in
      *"$PRIME_JAX_TCMALLOC"*) ;;
      *) export LD_PRELOAD="$PRIME_JAX_TCMALLOC${LD_PRELOAD:+:$LD_PRELOAD}" ;;
    esac
    # tcmalloc reports every allocation over 1 GiB on stderr, which would clutter large runs.
    : "${TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD:=68719476736}"
    export TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD
  else
    echo "[cpu_allocator] libtcmalloc_minimal.so.4 not found: CPU steps run with glibc's" \
      "malloc, ~1.15-1.25x slower (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)" >&2
  fi
fi
