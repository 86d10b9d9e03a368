//! Marketplace product codes (EC2 `ProductCodes`): an image may carry codes that its creator
//! attached (`image create --product-code C`). Copies keep them, and only the account that
//! attached a code may make an image carrying it public, so a paid image copied by a
//! customer cannot be republished for free (EC2: "You can't make an AMI with a product
//! code public unless you own the product code").

use super::error::{Result, StoreError};
use super::ids::AccountId;
use super::manifest::Image;
use serde::{Deserialize, Serialize};

/// Product code ids: at most this many characters (EC2's are 25 lowercase letters and digits,
/// e.g. `8fj6aw5cnpbd4zcz7elcfdtf6`; room to spare).
pub const PRODUCT_CODE_MAX_LEN: usize = 64;
/// At most this many codes per image (EC2 images carry one or two).
pub const MAX_PRODUCT_CODES: usize = 16;
/// The only product code type amivm knows (EC2 `ProductCodeType`).
pub const MARKETPLACE: &str = "marketplace";

/// One product code of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProductCode {
    pub product_code_id: String,
    /// Always [`MARKETPLACE`].
    pub product_code_type: String,
    /// The account that attached the code (its seller): not an EC2 field; copies keep it.
    pub owner_id: AccountId,
}

/// Check one code id: letters and digits, 1 to [`PRODUCT_CODE_MAX_LEN`] characters.
pub fn check_code(code: &str) -> Result<()> {
    if code.is_empty()
        || code.len() > PRODUCT_CODE_MAX_LEN
        || !code.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(StoreError::Invalid(format!(
            "product code '{}' must be 1-{PRODUCT_CODE_MAX_LEN} letters and digits",
            crate::text::escape_unsafe(code)
        )));
    }
    Ok(())
}

/// The codes `owner` attaches to a new image: checked, without duplicates, in order.
pub fn new_codes(owner: &AccountId, codes: &[String]) -> Result<Vec<ProductCode>> {
    let mut out: Vec<ProductCode> = Vec::new();
    for c in codes {
        check_code(c)?;
        if !out.iter().any(|p| p.product_code_id == *c) {
            out.push(ProductCode {
                product_code_id: c.clone(),
                product_code_type: MARKETPLACE.into(),
                owner_id: owner.clone(),
            });
        }
    }
    if out.len() > MAX_PRODUCT_CODES {
        return Err(StoreError::Invalid(format!(
            "at most {MAX_PRODUCT_CODES} product codes per image"
        )));
    }
    Ok(out)
}

/// Check the codes of a manifest read from a store or a region.
pub fn validate(codes: &[ProductCode]) -> std::result::Result<(), String> {
    if codes.len() > MAX_PRODUCT_CODES {
        return Err(format!("more than {MAX_PRODUCT_CODES} product codes"));
    }
    for c in codes {
        check_code(&c.product_code_id).map_err(|e| e.to_string())?;
        if c.product_code_type != MARKETPLACE {
            return Err(format!("product code type '{}'", c.product_code_type));
        }
    }
    Ok(())
}

/// Refuse to make `image` public unless `caller` attached every code it carries.
pub fn check_make_public(caller: &AccountId, image: &Image) -> Result<()> {
    match image.product_codes.iter().find(|c| c.owner_id != *caller) {
        Some(c) => Err(StoreError::PermissionDenied(format!(
            "image {} carries product code {} of account {}: only that account may make it public",
            image.image_id, c.product_code_id, c.owner_id
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let a = AccountId::parse("111111111111").unwrap();
        let v = new_codes(&a, &["abc123".into(), "abc123".into(), "x".into()]).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].product_code_type, MARKETPLACE);
        assert!(validate(&v).is_ok());
        for bad in ["", "a b", "a-b", &"a".repeat(65)] {
            assert!(new_codes(&a, &[bad.to_string()]).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("c{i}")).collect();
        assert!(new_codes(&a, &many).is_err());
        let mut odd = v.clone();
        odd[0].product_code_type = "devpay".into();
        assert!(validate(&odd).is_err());
    }
}
