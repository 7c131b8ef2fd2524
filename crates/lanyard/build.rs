//! Lays out the release binary's code: the functions that start-up and the device requests run
//! are placed together at the front of `.text`, in the order `symbol-order.txt` lists them
//! (written by `scripts/symbol-order`). Start-up then touches a few MiB of contiguous code
//! instead of a page here and there across all of it, and the kernel maps the file around each
//! touched page: an idle server's resident code falls from about 15 to about 5 MiB
//! (docs/BENCHMARKS.md, seventh round).
//!
//! It also packs the binary's relative relocations (`-z pack-relative-relocs`, DT_RELR, read by
//! glibc 2.36 and later): the loader then reads a 7 KiB table at start instead of a 0.5 MiB one,
//! whose pages stayed resident.
//!
//! Only the layout changes, never the code. A name the binary no longer has (after a dependency
//! or toolchain change) is skipped; a stale list costs memory, never correctness. It applies to
//! release builds for x86_64 Linux, whose default linker (LLD) reads the list; elsewhere, or
//! with `LANYARD_SYMBOL_ORDER=off` (a linker without `--symbol-ordering-file`), nothing changes.

use std::path::PathBuf;

fn main() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let list = PathBuf::from(var("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=LANYARD_SYMBOL_ORDER");
    let wanted = var("PROFILE") == "release"
        && var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && var("LANYARD_SYMBOL_ORDER") != "off"
        && list.exists();
    if wanted {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        // Relative relocations packed (DT_RELR, glibc 2.36 and later): the loader reads a
        // few KiB instead of the 0.5 MiB `.rela.dyn` table at every start, and those pages
        // stayed resident.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
