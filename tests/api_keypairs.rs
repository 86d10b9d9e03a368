//! Key pairs: `amivm key-pair` checked with OpenSSH's own tools (ssh-keygen reads the private
//! key amivm writes and prints the fingerprint amivm shows), and the EC2 key pair actions
//! through boto3 (tests/api/keypairs.py) and the AWS CLI, with `run --key-name` /
//! RunInstances' KeyName recorded in the instance.

mod api_common;
mod common;
mod instance_common;

use api_common::Server;
use instance_common::{Env, EXIT_FAILED, OWNER};
use std::os::unix::fs::MetadataExt;
use std::process::Command;

fn key_pairs(env: &Env) -> Vec<serde_json::Value> {
    serde_json::from_str(&env.ok(&["key-pair", "ls", "--output", "json"])).unwrap()
}

fn ssh_keygen(args: &[&str]) -> String {
    let out = Command::new("ssh-keygen")
        .args(args)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "ssh-keygen {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cli_key_pairs_agree_with_ssh_keygen() {
    let env = Env::new();
    // create --key-file: a 0600 OpenSSH private key that ssh-keygen reads; its public half
    // and fingerprint are what amivm stored and shows.
    let key = env.path("id_k1");
    let out = env.ok(&[
        "key-pair",
        "create",
        "k1",
        "--key-file",
        key.to_str().unwrap(),
    ]);
    let (id, fp) = out.trim().split_once('\t').expect("id and fingerprint");
    assert!(id.starts_with("key-"), "{out}");
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
    let k = key.to_str().unwrap();
    let public = ssh_keygen(&["-y", "-f", k]);
    let listed = key_pairs(&env);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["PublicKey"], public.trim());
    assert_eq!(listed[0]["KeyType"], "ed25519");
    // `256 SHA256:<base64 without padding> comment (ED25519)`; EC2 keeps the padding.
    let shown = ssh_keygen(&["-l", "-E", "sha256", "-f", k]);
    let sha = shown.split_whitespace().nth(1).unwrap();
    assert_eq!(
        format!("SHA256:{}", fp.trim_end_matches('=')),
        sha,
        "{shown}"
    );
    assert_eq!(listed[0]["KeyFingerprint"], fp);
    let store_text = std::fs::read_to_string(env.store.join("key-pairs.json")).unwrap();
    assert!(!store_text.contains("PRIVATE"), "the private key was kept");

    // Without --key-file the private key is printed once.
    let printed = env.ok(&["key-pair", "create", "k2"]);
    assert!(
        printed.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
        "{printed}"
    );

    // import: an RSA key from ssh-keygen; its fingerprint is the MD5 of the DER public key,
    // computed here with ssh-keygen (PKCS8 export) and openssl.
    let rsa = env.path("id_rsa");
    ssh_keygen(&[
        "-q",
        "-t",
        "rsa",
        "-b",
        "2048",
        "-N",
        "",
        "-f",
        rsa.to_str().unwrap(),
    ]);
    let rsa_pub = format!("{}.pub", rsa.display());
    let out = env.ok(&["key-pair", "import", "k3", "--public-key", &rsa_pub]);
    let pem = ssh_keygen(&["-e", "-m", "PKCS8", "-f", &rsa_pub]);
    let der = Command::new("sh")
        .arg("-c")
        .arg("openssl pkey -pubin -outform DER | openssl md5 -c")
        .stdin(
            std::fs::File::open({
                let p = env.path("rsa.pem");
                std::fs::write(&p, pem).unwrap();
                p
            })
            .unwrap(),
        )
        .output()
        .unwrap();
    let md5 = String::from_utf8(der.stdout).unwrap();
    let md5 = md5.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(out.trim().split('\t').nth(1), Some(md5.as_str()), "{out}");

    // Bad input: one line, exit 125, nothing changed.
    let before = key_pairs(&env);
    let bad = env.path("bad.pub");
    std::fs::write(&bad, "ssh-ed25519 AAAA\n").unwrap();
    let fails = |args: &[&str], want: &str| {
        let o = env.run(args);
        assert_eq!(o.code, Some(EXIT_FAILED), "{args:?}: {}", o.describe());
        assert!(o.stderr.contains(want), "{args:?}: {}", o.describe());
        assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.describe());
    };
    fails(
        &[
            "key-pair",
            "import",
            "k4",
            "--public-key",
            bad.to_str().unwrap(),
        ],
        "OpenSSH public key",
    );
    fails(
        &["key-pair", "import", "k4", "--public-key", "/dev/zero"],
        "regular file",
    );
    fails(&["key-pair", "create", "k1"], "already");
    fails(&["key-pair", "create", "tab\tname"], "printable ASCII");
    // An existing --key-file is never overwritten, and no key pair is made.
    fails(
        &["key-pair", "create", "k5", "--key-file", k],
        "cannot create",
    );
    assert_eq!(ssh_keygen(&["-y", "-f", k]), public);
    fails(&["key-pair", "rm", "nope"], "does not exist");
    fails(&["run", &env.ami, "--key-name", "nope"], "does not exist");
    assert_eq!(key_pairs(&env), before);

    // Another account sees none of them; rm by name and by id.
    let theirs = env.run_as("333333333333", &["key-pair", "ls", "--output", "json"]);
    assert_eq!(theirs.stdout.trim(), "[]", "{}", theirs.describe());
    env.ok(&["key-pair", "rm", "k2"]);
    env.ok(&["key-pair", "rm", id]);
    let left: Vec<String> = key_pairs(&env)
        .iter()
        .map(|k| k["KeyName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ["k3"]);
    let _ = OWNER;
}

#[test]
fn ec2_key_pair_actions_with_boto3_and_the_aws_cli() {
    let server = Server::start();
    let rsa_pub = server.env.path("imported.pub");
    let out = server.python("keypairs.py", &[rsa_pub.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "keypairs.py: {}", out.describe());
    assert!(out.stdout.contains("OK"), "{}", out.describe());
    // The instance record keeps the key pair's name and public key after the key pair is gone.
    let line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("INSTANCE "))
        .expect("the instance line");
    let (iid, public) = line.split_once(' ').unwrap();
    let inst = server.env.instance(iid);
    assert_eq!(inst["KeyName"], "k-created", "{inst}");
    assert_eq!(inst["PublicKey"], public, "{inst}");

    // The AWS CLI: import from a file (fileb://, base64 on the wire), describe, delete.
    let fileb = format!("fileb://{}", rsa_pub.display());
    let imp = server.aws(&[
        "ec2",
        "import-key-pair",
        "--key-name",
        "cli-key",
        "--public-key-material",
        &fileb,
        "--query",
        "KeyFingerprint",
        "--output",
        "text",
    ]);
    assert_eq!(imp.code, Some(0), "{}", imp.describe());
    let listed = server.aws(&[
        "ec2",
        "describe-key-pairs",
        "--key-names",
        "cli-key",
        "--include-public-key",
        "--query",
        "KeyPairs[0].[KeyFingerprint,KeyType,PublicKey]",
        "--output",
        "text",
    ]);
    assert_eq!(listed.code, Some(0), "{}", listed.describe());
    let fields: Vec<&str> = listed.stdout.trim().split('\t').collect();
    assert_eq!(fields[0], imp.stdout.trim());
    assert_eq!(fields[1], "rsa");
    let on_disk = std::fs::read_to_string(&rsa_pub).unwrap();
    assert_eq!(fields[2], on_disk.trim());
    // The CLI's view of the same store agrees.
    let cli = server.env.ok(&["key-pair", "ls", "--output", "json"]);
    assert!(cli.contains("cli-key"), "{cli}");
    let del = server.aws(&["ec2", "delete-key-pair", "--key-name", "cli-key"]);
    assert_eq!(del.code, Some(0), "{}", del.describe());
    let gone = server.aws(&["ec2", "describe-key-pairs", "--key-names", "cli-key"]);
    assert_ne!(gone.code, Some(0));
    assert!(
        gone.stderr.contains("InvalidKeyPair.NotFound"),
        "{}",
        gone.describe()
    );
}
