//! The XML of EC2 Query responses: `<ActionResponse xmlns="...">` with a `requestId` and the
//! element names of botocore's `ec2` model (the members' `locationName`s; list items are
//! `<item>`), and EC2's error document.
//!
//! A small writer: elements are opened and closed explicitly, text is escaped, and characters
//! XML 1.0 cannot carry at all (most C0 controls) are replaced by U+FFFD.

/// The namespace of EC2 API version 2016-11-15 responses.
pub const EC2_NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";
/// The XML declaration every response starts with (as EC2 sends it).
const DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

/// An XML document being written.
#[derive(Debug, Default)]
pub struct Xml {
    out: String,
}

impl Xml {
    /// `<ACTIONResponse xmlns="...">` with `<requestId>`: the body of a successful response.
    pub fn response(action: &str, request_id: &str) -> Xml {
        let mut x = Xml {
            out: String::with_capacity(1024),
        };
        x.out.push_str(DECLARATION);
        x.out.push('<');
        x.out.push_str(action);
        x.out.push_str("Response xmlns=\"");
        x.out.push_str(EC2_NAMESPACE);
        x.out.push_str("\">");
        x.leaf("requestId", request_id);
        x
    }

    /// Close the response opened by [`Xml::response`] and return the document.
    pub fn finish_response(mut self, action: &str) -> String {
        self.out.push_str("</");
        self.out.push_str(action);
        self.out.push_str("Response>");
        self.out
    }

    /// `<name>`.
    pub fn open(&mut self, name: &str) -> &mut Self {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        self
    }

    /// `</name>`.
    pub fn close(&mut self, name: &str) -> &mut Self {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
        self
    }

    /// `<name>text</name>`, the text escaped.
    pub fn leaf(&mut self, name: &str, text: &str) -> &mut Self {
        self.open(name);
        escape_into(&mut self.out, text);
        self.close(name)
    }

    /// A leaf only when there is a value.
    pub fn leaf_opt(&mut self, name: &str, text: Option<&str>) -> &mut Self {
        if let Some(t) = text {
            self.leaf(name, t);
        }
        self
    }

    /// `<name>true|false</name>`.
    pub fn bool(&mut self, name: &str, v: bool) -> &mut Self {
        self.leaf(name, if v { "true" } else { "false" })
    }

    /// `<name>N</name>`.
    pub fn num(&mut self, name: &str, v: impl std::fmt::Display) -> &mut Self {
        self.leaf(name, &v.to_string())
    }

    /// `<set><item>..</item>...</set>`: one `<item>` per element, filled by `f`.
    pub fn list<T>(
        &mut self,
        set: &str,
        items: &[T],
        mut f: impl FnMut(&mut Xml, &T),
    ) -> &mut Self {
        self.open(set);
        for it in items {
            self.open("item");
            f(self, it);
            self.close("item");
        }
        self.close(set)
    }

    /// `<tagSet><item><key>K</key><value>V</value></item>...</tagSet>`.
    pub fn tags<'a>(
        &mut self,
        tags: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> &mut Self {
        self.open("tagSet");
        for (k, v) in tags {
            self.open("item")
                .leaf("key", k)
                .leaf("value", v)
                .close("item");
        }
        self.close("tagSet")
    }

    /// The document so far (for tests).
    pub fn as_str(&self) -> &str {
        &self.out
    }
}

/// EC2's error document:
/// `<Response><Errors><Error><Code>C</Code><Message>M</Message></Error></Errors><RequestID>R</RequestID></Response>`.
pub fn error_document(code: &str, message: &str, request_id: &str) -> String {
    let mut x = Xml::default();
    x.out.push_str(DECLARATION);
    x.open("Response")
        .open("Errors")
        .open("Error")
        .leaf("Code", code)
        .leaf("Message", message)
        .close("Error")
        .close("Errors")
        .leaf("RequestID", request_id)
        .close("Response");
    x.out
}

/// Append `text` with `& < > " '` escaped and characters XML 1.0 forbids (C0 controls other than
/// tab, LF and CR; U+FFFE, U+FFFF) replaced by U+FFFD (XML 1.0, section 2.2 "Characters").
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' => out.push(c),
            // A literal CR would be normalised to LF by the parser: keep it as a reference.
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_drops_forbidden_characters() {
        let mut s = String::new();
        escape_into(&mut s, "a<b>&\"c'\u{1}\r\n\té");
        assert_eq!(s, "a&lt;b&gt;&amp;&quot;c&apos;\u{fffd}&#13;\n\té");
    }

    #[test]
    fn response_shape() {
        let mut x = Xml::response("DescribeImages", "req-1");
        x.list("imagesSet", &["ami-1", "ami-2"], |x, id| {
            x.leaf("imageId", id);
        });
        let doc = x.finish_response("DescribeImages");
        assert_eq!(
            doc,
            format!(
                "{DECLARATION}<DescribeImagesResponse xmlns=\"{EC2_NAMESPACE}\"><requestId>req-1</requestId>\
                 <imagesSet><item><imageId>ami-1</imageId></item><item><imageId>ami-2</imageId></item></imagesSet>\
                 </DescribeImagesResponse>"
            )
        );
    }

    #[test]
    fn error_shape() {
        let doc = error_document("AuthFailure", "no <key>", "r");
        assert!(doc.ends_with(
            "<Response><Errors><Error><Code>AuthFailure</Code><Message>no &lt;key&gt;</Message>\
             </Error></Errors><RequestID>r</RequestID></Response>"
        ));
    }
}
