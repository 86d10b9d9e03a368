"""Benchmark (not a test): DescribeImages over 10 000 images and DescribeInstances over 100
instances, amivm serve against moto_server holding the same data, in the same run.

Run by scripts/bench-api.sh, which starts both servers and passes: AMIVM_ENDPOINT (amivm),
MOTO_ENDPOINT, AMIVM_STORE (to populate images), AMIVM_AMI and the owner's keys."""
import json
import os
import random
import statistics
import sys
import time

from ec2env import *

N_IMAGES = int(os.environ.get("BENCH_IMAGES", "10000"))
N_INSTANCES = int(os.environ.get("BENCH_INSTANCES", "100"))
RUNS = int(os.environ.get("BENCH_RUNS", "50"))
# moto answers DescribeImages over 10 000 images in seconds: fewer requests for it.
MOTO_RUNS = int(os.environ.get("BENCH_MOTO_RUNS", "10"))


def populate_amivm_images(store, ami, n):
    """n copies of the AMI's manifest under new ids and names, written straight into the store's
    images/ (what `image copy` would write, minus the snapshot copies: a fast way to 10 000)."""
    src = json.load(open(os.path.join(store, "images", ami + ".json")))
    for i in range(n):
        m = dict(src)
        m["ImageId"] = "ami-" + "".join(random.choice("0123456789abcdef") for _ in range(17))
        m["Name"] = f"bench-{i:05d}"
        with open(os.path.join(store, "images", m["ImageId"] + ".json.tmp"), "w") as f:
            json.dump(m, f)
        os.rename(os.path.join(store, "images", m["ImageId"] + ".json.tmp"),
                  os.path.join(store, "images", m["ImageId"] + ".json"))


def populate(ec2, ami, moto):
    if moto:
        for i in range(N_IMAGES):
            ec2.register_image(Name=f"bench-{i:05d}", RootDeviceName="/dev/sda1")
    else:
        populate_amivm_images(os.environ["AMIVM_STORE"], ami, N_IMAGES)
    left = N_INSTANCES
    while left > 0:
        n = min(left, 20)
        ec2.run_instances(ImageId=ami, InstanceType="t2.nano", MinCount=n, MaxCount=n)
        left -= n


def measure(fn, runs):
    fn()  # warm
    times = []
    t0 = time.perf_counter()
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    total = time.perf_counter() - t0
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
        "req_s": runs / total,
    }


results = {}
for name, endpoint, ami in [("amivm", ENDPOINT, AMI), ("moto", os.environ["MOTO_ENDPOINT"], None)]:
    ec2 = client("OWNER", endpoint=endpoint) if name == "amivm" else boto3.client(
        "ec2", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="testing",
        aws_secret_access_key="testing", config=CONFIG)
    if ami is None:
        ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    t = time.time()
    populate(ec2, ami, name == "moto")
    print(f"{name}: populated in {time.time() - t:.1f} s", file=sys.stderr, flush=True)
    runs = RUNS if name == "amivm" else MOTO_RUNS
    cases = {
        "DescribeImages name filter (1 of 10000)": lambda: ec2.describe_images(
            Owners=["self"], Filters=[{"Name": "name", "Values": ["bench-04242"]}]),
        "DescribeImages page of 100": lambda: ec2.describe_images(Owners=["self"], MaxResults=100),
        "DescribeInstances (100)": lambda: ec2.describe_instances(),
    }
    results[name] = {}
    for case, fn in cases.items():
        results[name][case] = measure(fn, runs)
        print(f"{name}: {case}: {results[name][case]}", file=sys.stderr, flush=True)
for k in results["amivm"]:
    a, m = results["amivm"][k], results["moto"][k]
    print(f"{k:45s} amivm p50 {a['p50_ms']:8.2f} ms p99 {a['p99_ms']:8.2f} ms {a['req_s']:7.2f} req/s | "
          f"moto p50 {m['p50_ms']:8.2f} ms p99 {m['p99_ms']:8.2f} ms {m['req_s']:7.2f} req/s | "
          f"{a['req_s'] / m['req_s']:.1f}x")
