/* cmd_keygen.c - `fedpeft keygen`: a new X25519 identity (keys.h) for a worker or
 * the coordinator. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "keys.h"

static const char usage[] =
    "usage: fedpeft keygen --out DIR [--name NAME] [--force]\n"
    "  Writes DIR/NAME.key (secret key, mode 0600) and DIR/NAME.pub (public key);\n"
    "  DIR is created (mode 0700) when missing. NAME defaults to the host name.\n"
    "  The same X25519 key serves ZeroMQ CURVE and the sealing of updates; the\n"
    "  Ed25519 key that signs its secure-aggregation messages is derived from it.\n"
    "  Prints the allowlist line \"<Z85 public key> NAME sign=<Z85 signing key>\" on\n"
    "  stdout (details on stderr),\n"
    "  so `fedpeft keygen --out keys >> allowlist.txt` registers the key.\n"
    "  --force   overwrite an existing pair (the old secret key is lost)\n";

int cmd_keygen(int argc, char **argv)
{
    const char *cmd = "keygen", *out = NULL, *name = NULL;
    char host[64] = "fedpeft";
    int force = 0, c, rc = 1;
    static const struct option opts[] = {
        {"out", required_argument, 0, 'o'}, {"name", required_argument, 0, 'n'},
        {"force", no_argument, 0, 'f'},     {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'n': name = optarg; break;
        case 'f': force = 1; break;
        case 'h': fputs(usage, stdout); return 0;
        default: return cli_usage_hint(cmd);
        }
    }
    if (optind < argc)
        return cli_fail(cmd, "unexpected argument '%s'", argv[optind]), 2;
    if (!out) {
        fputs(usage, stderr);
        return cli_fail(cmd, "--out DIR is required"), 2;
    }
    if (!name) {
        if (gethostname(host, sizeof host) != 0 || !host[0])
            snprintf(host, sizeof host, "fedpeft");
        host[sizeof host - 1] = '\0';
        name = host;
    }
    if (mkdir(out, 0700) != 0 && errno != EEXIST)
        return cli_fail(cmd, "cannot create %s: %s", out, strerror(errno));
    fp_keypair *kp = fp_keypair_generate(name);
    if (!kp)
        return cli_fail_lib(cmd);
    if (fp_keypair_save(kp, out, force) != 0) {
        rc = cli_fail_lib(cmd);
        goto done;
    }
    fprintf(stderr, "fedpeft keygen: wrote %s/%s.key (secret, mode 0600) and %s/%s.pub\n"
                    "fedpeft keygen: allowlist line for this key:\n", out, kp->name, out,
            kp->name);
    printf("%s %s sign=%s\n", kp->public_z85, kp->name, kp->sign_z85);
    rc = fflush(stdout) == 0 ? 0 : 1;
done:
    fp_keypair_free(&kp);
    return rc;
}
