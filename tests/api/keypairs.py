"""Key pairs through boto3 (run by tests/api_keypairs.rs): create, import, describe with each
selector and filter, the errors EC2 gives, another account's view, RunInstances with KeyName,
and the instance keeping its key after the key pair is deleted.

Fingerprints are checked against values computed here with the `cryptography` package (moto's
dependency), independently of amivm: ed25519 -> base64 SHA-256 of the OpenSSH key blob (with
padding), imported rsa -> MD5 of the DER SubjectPublicKeyInfo, colon-separated.

Prints OK at the end; the RSA key imported is written to argv[1] (for the aws CLI part)."""
import base64
import hashlib
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ec2env import *

owner = client("OWNER")
stranger = client("STRANGER")


def ed25519_fingerprint(openssh_public):
    blob = base64.b64decode(openssh_public.split()[1])
    return base64.b64encode(hashlib.sha256(blob).digest()).decode()


def md5_der_fingerprint(public_key):
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    h = hashlib.md5(der).hexdigest()
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


step("CreateKeyPair ed25519: an OpenSSH private key whose public half has the fingerprint")
made = owner.create_key_pair(KeyName="k-created", KeyType="ed25519", TagSpecifications=[
    {"ResourceType": "key-pair", "Tags": [{"Key": "team", "Value": "blue"}]}])
check(made["KeyMaterial"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----"), made["KeyMaterial"][:40])
private = serialization.load_ssh_private_key(made["KeyMaterial"].encode(), password=None)
check(isinstance(private, ed25519.Ed25519PrivateKey), type(private))
created_pub = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                serialization.PublicFormat.OpenSSH).decode()
check(made["KeyFingerprint"] == ed25519_fingerprint(created_pub),
      f"{made['KeyFingerprint']} != {ed25519_fingerprint(created_pub)}")
check(made["KeyPairId"].startswith("key-"), made)
check(made.get("Tags") == [{"Key": "team", "Value": "blue"}], made.get("Tags"))
# Without KeyType amivm makes ed25519 too; rsa and ppk are refused as unsupported.
check(owner.create_key_pair(KeyName="k-default")["KeyMaterial"].startswith("-----BEGIN OPENSSH"), "default type")
expect_error("Unsupported", owner.create_key_pair, KeyName="k-rsa", KeyType="rsa")
expect_error("Unsupported", owner.create_key_pair, KeyName="k-ppk", KeyFormat="ppk")
expect_error("InvalidKeyPair.Duplicate", owner.create_key_pair, KeyName="k-created")
expect_error("InvalidParameterValue", owner.create_key_pair, KeyName="x" * 256)

step("ImportKeyPair: rsa and ed25519 public keys as botocore sends them (base64)")
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
rsa_pub = rsa_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                            serialization.PublicFormat.OpenSSH).decode()
imp = owner.import_key_pair(KeyName="k-rsa-imported", PublicKeyMaterial=(rsa_pub + " me@host\n").encode())
check(imp["KeyFingerprint"] == md5_der_fingerprint(rsa_key.public_key()),
      f"{imp['KeyFingerprint']} != {md5_der_fingerprint(rsa_key.public_key())}")
ed_pub = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
imp2 = owner.import_key_pair(KeyName="k-ed-imported", PublicKeyMaterial=ed_pub.encode())
check(imp2["KeyFingerprint"] == ed25519_fingerprint(ed_pub), imp2)
expect_error("InvalidKeyPair.Format", owner.import_key_pair, KeyName="k-bad", PublicKeyMaterial=b"ssh-ed25519 AAAA")
expect_error("InvalidKeyPair.Format", owner.import_key_pair, KeyName="k-bad", PublicKeyMaterial=b"\x00\xff garbage")
expect_error("InvalidKeyPair.Duplicate", owner.import_key_pair, KeyName="k-ed-imported", PublicKeyMaterial=ed_pub.encode())
with open(sys.argv[1], "w") as f:
    f.write(rsa_pub + "\n")

step("DescribeKeyPairs: names, ids, filters, IncludePublicKey")
names = lambda r: sorted(k["KeyName"] for k in r["KeyPairs"])
everything = owner.describe_key_pairs()
check(names(everything) == ["k-created", "k-default", "k-ed-imported", "k-rsa-imported"], names(everything))
check(all("PublicKey" not in k for k in everything["KeyPairs"]), "PublicKey without IncludePublicKey")
r = owner.describe_key_pairs(KeyNames=["k-rsa-imported"], IncludePublicKey=True)["KeyPairs"]
check(len(r) == 1 and r[0]["PublicKey"] == rsa_pub and r[0]["KeyType"] == "rsa", r)
check(r[0]["CreateTime"].year >= 2024, r[0]["CreateTime"])
r = owner.describe_key_pairs(KeyPairIds=[made["KeyPairId"]])["KeyPairs"]
check([k["KeyName"] for k in r] == ["k-created"], r)
check(names(owner.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["k-*-imported"]}]))
      == ["k-ed-imported", "k-rsa-imported"], "key-name filter")
check(names(owner.describe_key_pairs(Filters=[{"Name": "key-pair-id", "Values": [imp["KeyPairId"]]}]))
      == ["k-rsa-imported"], "key-pair-id filter")
check(names(owner.describe_key_pairs(Filters=[{"Name": "tag:team", "Values": ["blue"]}])) == ["k-created"], "tag filter")
check(names(owner.describe_key_pairs(Filters=[{"Name": "key-type", "Values": ["rsa"]}])) == ["k-rsa-imported"], "key-type")
expect_error("InvalidKeyPair.NotFound", owner.describe_key_pairs, KeyNames=["nope"])
expect_error("InvalidKeyPair.NotFound", owner.describe_key_pairs, KeyPairIds=["key-0123456789abcdef0"])
expect_error("InvalidParameterValue", owner.describe_key_pairs, Filters=[{"Name": "bogus", "Values": ["x"]}])

step("another account sees none of them and cannot launch with them")
check(stranger.describe_key_pairs()["KeyPairs"] == [], "stranger sees the owner's keys")
expect_error("InvalidKeyPair.NotFound", stranger.describe_key_pairs, KeyNames=["k-created"])
owner.modify_image_attribute(ImageId=AMI, LaunchPermission={"Add": [{"UserId": STRANGER}]})
expect_error("InvalidKeyPair.NotFound", stranger.run_instances, ImageId=AMI, InstanceType="t3.micro",
             MinCount=1, MaxCount=1, KeyName="k-created")
# The same name in the stranger's account is theirs alone.
stranger.import_key_pair(KeyName="k-created", PublicKeyMaterial=ed_pub.encode())
check(owner.describe_key_pairs(KeyNames=["k-created"])["KeyPairs"][0]["KeyFingerprint"] == made["KeyFingerprint"],
      "the stranger's key replaced the owner's")

step("RunInstances with KeyName: recorded, shown, kept after DeleteKeyPair")
expect_error("InvalidKeyPair.NotFound", owner.run_instances, ImageId=AMI, InstanceType="t3.micro",
             MinCount=1, MaxCount=1, KeyName="nope")
iid = owner.run_instances(ImageId=AMI, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                          KeyName="k-created", UserData="exit=halt")["Instances"][0]
check(iid.get("KeyName") == "k-created", iid.get("KeyName"))
iid = iid["InstanceId"]
r = owner.delete_key_pair(KeyName="k-created")
check(r["Return"] is True and r["KeyPairId"] == made["KeyPairId"], r)
inst = owner.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
check(inst.get("KeyName") == "k-created", inst.get("KeyName"))
print(f"INSTANCE {iid} {created_pub}", flush=True)
# Deleting a name that does not exist succeeds, as in EC2; an unknown id does not.
check(owner.delete_key_pair(KeyName="k-created")["Return"] is True, "idempotent delete")
expect_error("InvalidKeyPair.NotFound", owner.delete_key_pair, KeyPairId=made["KeyPairId"])
owner.delete_key_pair(KeyPairId=imp2["KeyPairId"])
check(names(owner.describe_key_pairs()) == ["k-default", "k-rsa-imported"], names(owner.describe_key_pairs()))
owner.terminate_instances(InstanceIds=[iid])
wait(owner, "instance_terminated", InstanceIds=[iid])
print("OK", flush=True)
