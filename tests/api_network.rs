//! What DescribeInstances and DescribeImages say of an instance's network card and of Marketplace
//! product codes, as the AWS CLI parses them: the card's MAC is the one `ps` records (and the
//! metadata service serves), and an image's product codes show on it, on its attribute and on
//! the instances launched from it.

mod api_common;
mod common;
mod instance_common;

use api_common::Server;

fn json(out: &common::RunOutput) -> serde_json::Value {
    assert_eq!(out.code, Some(0), "{}", out.describe());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[test]
fn the_network_card_and_product_codes_as_the_aws_cli_sees_them() {
    let server = Server::start();
    let env = &server.env;
    let root = env.path("root.raw");
    std::fs::File::create(&root)
        .unwrap()
        .set_len(instance_common::ROOT_BYTES)
        .unwrap();
    let guest = common::build_guest();
    let ami = env
        .ok(&[
            "image",
            "create",
            "--name",
            "paid",
            "--kernel",
            guest.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--product-code",
            "abc123def",
        ])
        .trim()
        .to_string();
    let images = json(&server.aws(&["ec2", "describe-images", "--image-ids", &ami]));
    let codes = &images["Images"][0]["ProductCodes"];
    assert_eq!(codes[0]["ProductCodeId"], "abc123def", "{images}");
    assert_eq!(codes[0]["ProductCodeType"], "marketplace", "{images}");
    let attr = json(&server.aws(&[
        "ec2",
        "describe-image-attribute",
        "--image-id",
        &ami,
        "--attribute",
        "productCodes",
    ]));
    assert_eq!(attr["ProductCodes"], *codes, "{attr}");

    let run = json(&server.aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        &ami,
        "--count",
        "1",
        "--user-data",
        "exit=halt",
    ]));
    let id = run["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string();
    let d = json(&server.aws(&["ec2", "describe-instances", "--instance-ids", &id]));
    let i = &d["Reservations"][0]["Instances"][0];
    assert_eq!(i["ProductCodes"], *codes, "{i}");
    let card = &i["NetworkInterfaces"][0];
    let recorded = env.instance(&id);
    assert_eq!(card["MacAddress"], recorded["MacAddress"], "{i}");
    assert_eq!(card["Attachment"]["DeviceIndex"], 0, "{i}");
    assert_eq!(card["Status"], "in-use", "{i}");
    let t = server.aws(&["ec2", "terminate-instances", "--instance-ids", &id]);
    assert_eq!(t.code, Some(0), "{}", t.describe());
}
