# bash completion for versionfs.  Install: cp to /usr/share/bash-completion/completions/versionfs
# (contrib/install.sh --system does), or `source` it from ~/.bashrc.

_versionfs_mounts() {
    # versionfs mountpoints, from /proc/self/mountinfo (type fuse.versionfs)
    awk '$0 ~ / - fuse\.versionfs / { print $5 }' /proc/self/mountinfo 2>/dev/null
}

_versionfs() {
    local cur prev words cword
    if declare -F _init_completion >/dev/null 2>&1; then
        _init_completion || return
    else
        cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD-1]}
        words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD
    fi
    local commands="init mount umount snapshot snapshots status flush serve-store demo log diff restore forget gc fsck clone key"

    if [ "$cword" -eq 1 ]; then
        COMPREPLY=($(compgen -W "$commands --help --version" -- "$cur"))
        return
    fi
    local cmd=${words[1]}
    case $prev in
        --slow) COMPREPLY=($(compgen -W "file:// s3://" -- "$cur")); return ;;
        --passphrase-file|--new-passphrase-file|--recovery-key-file|--output) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --cipher) COMPREPLY=($(compgen -W "aes-256-gcm chacha20-poly1305" -- "$cur")); return ;;
        -o) COMPREPLY=($(compgen -W "allow_other allow_root default_permissions ro nonempty passphrase_file=" -- "$cur")); return ;;
        --timeout) return ;;
        --to) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --state) COMPREPLY=($(compgen -d -- "$cur")); return ;;
    esac
    if [[ $cur == -* ]]; then
        local opts="--help"
        case $cmd in
            init) opts="--slow --encrypt --cipher --passphrase-file --allow-weak-passphrase --help" ;;
            mount) opts="--foreground -o --read-only --passphrase-file --recovery-key-file --help" ;;
            umount|unmount) opts="--timeout --lazy --help" ;;
            status) opts="--json --help" ;;
            flush) opts="--timeout --help" ;;
            demo) opts="--state-dir --mountpoint --help" ;;
            log) opts="--json --help" ;;
            diff) opts="--stat --json --help" ;;
            restore) opts="--to --no-progress --help" ;;
            forget) opts="--state --passphrase-file --dry-run --keep-last --keep-hourly --keep-daily --keep-weekly --keep-monthly --keep-yearly --keep-within --keep-named --help" ;;
            gc) opts="--state --passphrase-file --dry-run --full --help" ;;
            fsck) opts="--read-data --repair --passphrase-file --quiet --help" ;;
            clone) opts="--passphrase-file --recovery-key-file --quiet --help" ;;
            key) opts="--passphrase-file --recovery-key-file --new-passphrase-file --allow-weak-passphrase --output --help" ;;
        esac
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi
    case $cmd in
        init|mount|demo|fsck) COMPREPLY=($(compgen -d -- "$cur")) ;;
        key)
            if [ "$cword" -eq 2 ]; then
                COMPREPLY=($(compgen -W "passwd export" -- "$cur"))
            else
                COMPREPLY=($(compgen -d -- "$cur"))
            fi ;;
        clone)
            if [ "$cword" -eq 2 ]; then
                COMPREPLY=($(compgen -W "file:// s3://" -- "$cur"))
            else
                COMPREPLY=($(compgen -d -- "$cur"))
            fi ;;
        umount|unmount|snapshot|snapshots|status|flush|gc)
            local mounts
            mounts=$(_versionfs_mounts)
            COMPREPLY=($(compgen -W "$mounts" -- "$cur"))
            [ ${#COMPREPLY[@]} -eq 0 ] && COMPREPLY=($(compgen -d -- "$cur")) ;;
        log|diff|restore|forget)
            # MOUNTPOINT first, then snapshot names (diff, restore, forget) or paths in the mount.
            local mnt=${words[2]} snaps
            if [ "$cword" -eq 2 ]; then
                COMPREPLY=($(compgen -W "$(_versionfs_mounts)" -- "$cur"))
                [ ${#COMPREPLY[@]} -eq 0 ] && COMPREPLY=($(compgen -d -- "$cur"))
            elif [ "$cmd" = log ] || { [ "$cmd" = restore ] && [ "$cword" -ge 4 ]; }; then
                COMPREPLY=($(compgen -f -- "$cur"))
            else
                snaps=$(ls "$mnt/.versionfs/snapshots" 2>/dev/null)
                COMPREPLY=($(compgen -W "$snaps latest live" -- "$cur"))
            fi ;;
    esac
}
complete -F _versionfs versionfs
