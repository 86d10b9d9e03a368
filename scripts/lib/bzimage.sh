# shellcheck shell=bash
# bzImage → vmlinux extraction, in plain bash + coreutils + the decompressor the payload needs.
# Source after common.sh. Entry point: extract_vmlinux BZIMAGE OUT.
#
# How a bzImage is laid out (Linux Documentation/arch/x86/boot.rst, "The real-mode kernel header"):
#   0x1f1  setup_sects     u8   sectors of real-mode setup code after the boot sector (0 means 4)
#   0x202  header          u32  "HdrS" (0x53726448)
#   0x206  version         u16  boot protocol version, major.minor as 0xMMmm
#   0x248  payload_offset  u32  (2.08+) offset of the compressed kernel from the start of the
#                               protected-mode code, which begins at (setup_sects + 1) * 512
#   0x24c  payload_length  u32  (2.08+) its length
# The payload is arch/x86/boot/compressed/vmlinux.bin (vmlinux with symbols stripped, still an ELF;
# plus the relocation table when CONFIG_X86_NEED_RELOCS) compressed with one of the kernel's
# compressors. Except for gzip, whose trailer holds it anyway, the kernel build appends the
# uncompressed size as a little-endian u32 (scripts/Makefile.lib: size_append, *_with_size).

# Offsets in the setup header (boot.rst).
readonly BZ_SETUP_SECTS_OFF=$((0x1f1))
readonly BZ_HEADER_OFF=$((0x202))
readonly BZ_VERSION_OFF=$((0x206))
readonly BZ_PAYLOAD_OFFSET_OFF=$((0x248))
readonly BZ_PAYLOAD_LENGTH_OFF=$((0x24c))
# "HdrS" read as a little-endian u32.
readonly BZ_HDRS_MAGIC=$((0x53726448))
# payload_offset/payload_length exist from boot protocol 2.08 on.
readonly BZ_MIN_VERSION=$((0x0208))
# A sector: the unit of setup_sects.
readonly BZ_SECTOR=512
# setup_sects == 0 means 4, for compatibility with ancient kernels (boot.rst).
readonly BZ_DEFAULT_SETUP_SECTS=4

# ELF64 header fields (System V ABI, "ELF Header").
readonly ELF_MAGIC_HEX=7f454c46
readonly ELFCLASS64=2
readonly ELFDATA2LSB=1
readonly ET_EXEC=2
readonly EM_X86_64=62
# PT_NOTE segments and the Xen note Linux uses for its PVH entry point
# (include/xen/interface/elfnote.h: XEN_ELFNOTE_PHYS32_ENTRY = 18, owner "Xen").
readonly PT_NOTE=4
readonly XEN_ELFNOTE_PHYS32_ENTRY=18

# le_u BYTES FILE OFFSET: unsigned little-endian integer of 1, 2, 4 or 8 bytes (od uses host order,
# and every host amivm runs on is x86_64, i.e. little-endian).
le_u() { od -An -v -t "u$1" -j "$3" -N "$1" "$2" | tr -d ' \n'; }
# hex_at FILE OFFSET COUNT: COUNT bytes as lowercase hex, no spaces.
hex_at() { od -An -v -t x1 -j "$2" -N "$3" "$1" | tr -d ' \n'; }

# payload_bytes FILE OFFSET COUNT: COUNT bytes of FILE from OFFSET, to stdout.
payload_bytes() { dd if="$1" bs=4M iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none; }

# payload_format HEXPREFIX: the compressor whose magic starts HEXPREFIX (first 6 bytes in hex).
payload_format() {
    case $1 in
    1f8b*) echo gzip ;;         # RFC 1952: ID1 ID2
    fd377a585a00*) echo xz ;;   # xz file format: FD '7zXZ' 00
    02214c18*) echo lz4 ;;      # LZ4 legacy frame (lz4 -l), magic 0x184C2102
    28b52ffd*) echo zstd ;;     # RFC 8878 frame magic 0xFD2FB528
    425a68*) echo bzip2 ;;      # "BZh"
    5d0000*) echo lzma ;;       # lzma-alone properties byte 0x5d + dict size
    89*4c5a4f*) echo lzo ;;     # lzop
    *) echo unknown ;;
    esac
}

# decompress FORMAT: filters stdin to stdout.
decompress() {
    case $1 in
    gzip) need_tool gzip gzip && gzip -dc ;;
    xz) need_tool xz xz-utils && xz -dc ;;
    lz4) need_tool lz4 lz4 && lz4 -dc ;;
    zstd) need_tool zstd zstd && zstd -dcq ;;
    bzip2) need_tool bzip2 bzip2 && bzip2 -dc ;;
    lzma) need_tool xz xz-utils && xz -dc --format=lzma ;;
    *) die "no decompressor for a $1 payload" ;;
    esac
}

# elf_x86_64_check FILE: fails unless FILE starts with an ELF64 little-endian x86-64 executable header.
elf_x86_64_check() {
    local f=$1
    [ "$(hex_at "$f" 0 4)" = "$ELF_MAGIC_HEX" ] || die "$f: not an ELF file"
    [ "$(le_u 1 "$f" 4)" = "$ELFCLASS64" ] || die "$f: not a 64-bit ELF"
    [ "$(le_u 1 "$f" 5)" = "$ELFDATA2LSB" ] || die "$f: not little-endian"
    [ "$(le_u 2 "$f" 16)" = "$ET_EXEC" ] || die "$f: not an executable ELF (e_type)"
    [ "$(le_u 2 "$f" 18)" = "$EM_X86_64" ] || die "$f: not an x86-64 ELF (e_machine)"
}

# elf_end FILE: the end of the last byte the ELF's headers describe (program and section headers,
# segment and section contents). Bytes past it (the appended relocation table) are not part of it.
elf_end() {
    local f=$1 end phoff phentsize phnum shoff shentsize shnum i base o s t
    phoff=$(le_u 8 "$f" 32)
    shoff=$(le_u 8 "$f" 40)
    phentsize=$(le_u 2 "$f" 54)
    phnum=$(le_u 2 "$f" 56)
    shentsize=$(le_u 2 "$f" 58)
    shnum=$(le_u 2 "$f" 60)
    end=$((phoff + phnum * phentsize))
    [ $((shoff + shnum * shentsize)) -gt $end ] && end=$((shoff + shnum * shentsize))
    for ((i = 0; i < phnum; i++)); do # Elf64_Phdr: p_offset at +8, p_filesz at +32
        base=$((phoff + i * phentsize))
        o=$(le_u 8 "$f" $((base + 8)))
        s=$(le_u 8 "$f" $((base + 32)))
        [ $((o + s)) -gt $end ] && end=$((o + s))
    done
    for ((i = 0; i < shnum; i++)); do # Elf64_Shdr: sh_type at +4, sh_offset at +24, sh_size at +32
        base=$((shoff + i * shentsize))
        t=$(le_u 4 "$f" $((base + 4)))
        [ "$t" = 8 ] && continue # SHT_NOBITS occupies no file space
        o=$(le_u 8 "$f" $((base + 24)))
        s=$(le_u 8 "$f" $((base + 32)))
        [ $((o + s)) -gt $end ] && end=$((o + s))
    done
    echo "$end"
}

# elf_has_pvh_note FILE: succeeds when a PT_NOTE segment holds a Xen XEN_ELFNOTE_PHYS32_ENTRY note.
elf_has_pvh_note() {
    local f=$1 phoff phentsize phnum i base o s p namesz descsz type name
    phoff=$(le_u 8 "$f" 32)
    phentsize=$(le_u 2 "$f" 54)
    phnum=$(le_u 2 "$f" 56)
    for ((i = 0; i < phnum; i++)); do
        base=$((phoff + i * phentsize))
        [ "$(le_u 4 "$f" "$base")" = "$PT_NOTE" ] || continue
        o=$(le_u 8 "$f" $((base + 8)))
        s=$(le_u 8 "$f" $((base + 32)))
        p=$o
        # Elf64_Nhdr: namesz, descsz, type (u32 each), then name and desc, each padded to 4 bytes.
        while [ $((p + 12)) -le $((o + s)) ]; do
            namesz=$(le_u 4 "$f" "$p")
            descsz=$(le_u 4 "$f" $((p + 4)))
            type=$(le_u 4 "$f" $((p + 8)))
            name=$(dd if="$f" bs=1 skip=$((p + 12)) count=$((namesz > 0 ? namesz - 1 : 0)) 2>/dev/null)
            if [ "$name" = Xen ] && [ "$type" = "$XEN_ELFNOTE_PHYS32_ENTRY" ]; then
                return 0
            fi
            p=$((p + 12 + (namesz + 3) / 4 * 4 + (descsz + 3) / 4 * 4))
        done
    done
    return 1
}

# extract_vmlinux BZIMAGE OUT: writes the kernel ELF inside BZIMAGE to OUT and logs what it found;
# sets BZ_PAYLOAD_FORMAT to the payload's compressor.
BZ_PAYLOAD_FORMAT=
extract_vmlinux() {
    local bz=$1 out=$2 setup_sects version poff plen start fmt tmp expect got end
    [ "$(le_u 4 "$bz" $BZ_HEADER_OFF)" = "$BZ_HDRS_MAGIC" ] || die "$bz: no HdrS setup header: not a bzImage"
    version=$(le_u 2 "$bz" $BZ_VERSION_OFF)
    [ "$version" -ge $BZ_MIN_VERSION ] ||
        die "$bz: boot protocol $((version >> 8)).$((version & 255)) has no payload fields (need 2.08+)"
    setup_sects=$(le_u 1 "$bz" $BZ_SETUP_SECTS_OFF)
    [ "$setup_sects" -eq 0 ] && setup_sects=$BZ_DEFAULT_SETUP_SECTS
    poff=$(le_u 4 "$bz" $BZ_PAYLOAD_OFFSET_OFF)
    plen=$(le_u 4 "$bz" $BZ_PAYLOAD_LENGTH_OFF)
    start=$(((setup_sects + 1) * BZ_SECTOR + poff))
    [ $((start + plen)) -le "$(stat -c %s "$bz")" ] || die "$bz: payload runs past the end of the file"
    fmt=$(payload_format "$(hex_at "$bz" "$start" 6)")
    # shellcheck disable=SC2034 # read by the scripts that source this file
    BZ_PAYLOAD_FORMAT=$fmt
    log "bzImage: boot protocol $((version >> 8)).$((version & 255)), setup $setup_sects sectors," \
        "$fmt payload of $plen bytes at offset $start"
    [ "$fmt" = unknown ] && die "$bz: unrecognised payload magic $(hex_at "$bz" "$start" 6)"

    tmp="$out.tmp$$"
    if [ "$fmt" = gzip ]; then
        payload_bytes "$bz" "$start" "$plen" | decompress gzip >"$tmp" || die "gzip decompression of $bz failed"
        # gzip's own trailer (ISIZE) is the size mod 2^32.
        expect=$(le_u 4 "$bz" $((start + plen - 4)))
    else
        # The last 4 bytes are the kernel's size_append, not compressed data: leave them out, or the
        # decompressor reports trailing garbage.
        payload_bytes "$bz" "$start" $((plen - 4)) | decompress "$fmt" >"$tmp" ||
            die "$fmt decompression of $bz failed"
        expect=$(le_u 4 "$bz" $((start + plen - 4)))
    fi
    got=$(stat -c %s "$tmp")
    [ "$got" = "$expect" ] || die "$bz: decompressed $got bytes, the kernel recorded $expect"
    elf_x86_64_check "$tmp"
    end=$(elf_end "$tmp")
    [ "$end" -le "$got" ] || die "$bz: the ELF describes $end bytes but only $got were decompressed"
    if [ "$end" -lt "$got" ]; then
        log "dropping $((got - end)) bytes after the ELF (the relocation table for KASLR)"
        truncate -s "$end" "$tmp"
    fi
    mv -f "$tmp" "$out"
}
