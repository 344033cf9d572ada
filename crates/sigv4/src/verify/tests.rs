use super::*;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

/// Signed requests of the published AWS SigV4 test suite (`header-signed-request.txt`), all
/// signed for 2015-08-30T12:36:00Z with the suite's example credentials.
const SUITE: &[(&str, &str)] = &[
    (
        "get-vanilla",
        "GET / HTTP/1.1\nHost:example.amazonaws.com\nAuthorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31\nX-Amz-Date:20150830T123600Z\n",
    ),
    (
        "get-vanilla-query-order-key-case",
        "GET /?Param2=value2&Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\nAuthorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500\nX-Amz-Date:20150830T123600Z\n",
    ),
    (
        "get-header-value-trim",
        "GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1: value1\nMy-Header2: \"a   b   c\"\nAuthorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736\nX-Amz-Date:20150830T123600Z\n",
    ),
    (
        "get-unreserved",
        "GET /-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1\nHost:example.amazonaws.com\nAuthorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f\nX-Amz-Date:20150830T123600Z\n",
    ),
    (
        "get-vanilla-utf8-query",
        "GET /?\u{1234}=bar HTTP/1.1\nHost:example.amazonaws.com\nAuthorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04\nX-Amz-Date:20150830T123600Z\n",
    ),
    (
        "get-vanilla-with-session-token",
        "GET / HTTP/1.1\nHost:example.amazonaws.com\nAuthorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8\nX-Amz-Date:20150830T123600Z\nX-Amz-Security-Token:6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267\n",
    ),
];

struct Parsed {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

fn parse(text: &str) -> Parsed {
    let mut lines = text.lines();
    let first = lines.next().unwrap();
    let mut words = first.split(' ');
    let method = words.next().unwrap().to_string();
    let target = words.next().unwrap();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = lines
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    Parsed {
        method,
        path: path.into(),
        query: query.into(),
        headers,
    }
}

fn at(s: &str) -> OffsetDateTime {
    parse_amz_date(s).unwrap()
}

fn check(p: &Parsed, now: OffsetDateTime, secret: &str) -> Result<Verified, VerifyError> {
    verify(
        &Request {
            method: &p.method,
            path: &p.path,
            query: &p.query,
            headers: &p.headers,
            payload_sha256: &hex_sha256(b""),
        },
        now,
        |akid| (akid == AKID).then(|| secret.to_string()),
    )
}

#[test]
fn the_published_suite_verifies() {
    for (name, text) in SUITE {
        let got = check(&parse(text), at("20150830T123600Z"), SECRET);
        let v = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(v.access_key_id, AKID, "{name}");
        assert_eq!(
            (v.region.as_str(), v.service.as_str()),
            ("us-east-1", "service")
        );
    }
    let token = check(&parse(SUITE[5].1), at("20150830T123600Z"), SECRET).unwrap();
    assert_eq!(
        token.session_token.as_deref(),
        Some("6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267")
    );
}

#[test]
fn a_wrong_secret_is_a_mismatch() {
    for (name, text) in SUITE {
        let got = check(&parse(text), at("20150830T123600Z"), "not-the-secret");
        assert_eq!(got, Err(VerifyError::SignatureMismatch), "{name}");
    }
}

#[test]
fn a_tampered_request_is_a_mismatch() {
    let mut p = parse(SUITE[1].1);
    p.query = "Param2=value2&Param1=value9".into();
    assert_eq!(
        check(&p, at("20150830T123600Z"), SECRET),
        Err(VerifyError::SignatureMismatch)
    );
    let mut p = parse(SUITE[0].1);
    p.method = "DELETE".into();
    assert_eq!(
        check(&p, at("20150830T123600Z"), SECRET),
        Err(VerifyError::SignatureMismatch)
    );
    let p = parse(SUITE[0].1);
    let got = verify(
        &Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &p.headers,
            payload_sha256: &hex_sha256(b"a body that was not signed"),
        },
        at("20150830T123600Z"),
        |_| Some(SECRET.into()),
    );
    assert_eq!(got, Err(VerifyError::SignatureMismatch));
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let got = verify(
        &Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &parse(SUITE[0].1).headers,
            payload_sha256: &hex_sha256(b""),
        },
        at("20150830T123600Z"),
        |_| None,
    );
    assert_eq!(got, Err(VerifyError::UnknownAccessKey(AKID.into())));
}

#[test]
fn skew_beyond_fifteen_minutes_is_refused_either_way() {
    let p = parse(SUITE[0].1);
    assert!(check(&p, at("20150830T125100Z"), SECRET).is_ok());
    assert!(check(&p, at("20150830T122100Z"), SECRET).is_ok());
    for now in ["20150830T125101Z", "20150830T122059Z", "20150831T123600Z"] {
        assert!(
            matches!(check(&p, at(now), SECRET), Err(VerifyError::Skewed { .. })),
            "{now}"
        );
    }
}

#[test]
fn missing_and_malformed_authorization_are_refused() {
    let none: Vec<(String, String)> = vec![("Host".into(), "h".into())];
    let req = |headers: &[(String, String)]| {
        verify(
            &Request {
                method: "GET",
                path: "/",
                query: "",
                headers,
                payload_sha256: &hex_sha256(b""),
            },
            at("20150830T123600Z"),
            |_| Some(SECRET.into()),
        )
    };
    assert_eq!(req(&none), Err(VerifyError::Missing));
    let mut p = parse(SUITE[0].1);
    for (k, v) in &mut p.headers {
        if k == "Authorization" {
            *v = v.replace("SignedHeaders=host;x-amz-date", "SignedHeaders=host");
        }
    }
    assert!(matches!(req(&p.headers), Err(VerifyError::Malformed(_))));
    let basic = vec![
        ("Host".into(), "h".into()),
        ("Authorization".into(), "Basic dXNlcjpwYXNz".into()),
    ];
    assert!(matches!(req(&basic), Err(VerifyError::Malformed(_))));
}

/// Requests that botocore 1.44.8 signed (captured before sending; see the fixture), including
/// percent-encoded path labels, a `%2F` topic, query values with spaces, a JSON body and the
/// `x-amzn-principal` header.
#[test]
fn requests_signed_by_botocore_verify() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/fixtures/botocore-signed.json")).unwrap();
    let secret = fixture["secret"].as_str().unwrap().to_string();
    let requests = fixture["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 6);
    for r in requests {
        let url = r["url"].as_str().unwrap();
        let target = &url[url.find("8080").unwrap() + 4..];
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let headers: Vec<(String, String)> = r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
            .collect();
        let body: Vec<u8> = (0..r["body_hex"].as_str().unwrap().len() / 2)
            .map(|i| {
                u8::from_str_radix(&r["body_hex"].as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap()
            })
            .collect();
        let date = headers
            .iter()
            .find(|(k, _)| k == "X-Amz-Date")
            .unwrap()
            .1
            .clone();
        let request = Request {
            method: r["method"].as_str().unwrap(),
            path,
            query,
            headers: &headers,
            payload_sha256: &hex_sha256(&body),
        };
        let v = verify(&request, at(&date), |k| {
            (k == "AKIALICHENTESTKEY001").then(|| secret.clone())
        })
        .unwrap_or_else(|e| panic!("{url}: {e}"));
        let expect = if path.starts_with("/topics/") {
            "iotdata"
        } else {
            "iot"
        };
        assert_eq!(v.service, expect, "{url}");
        assert_eq!(v.region, "us-east-1");
        let wrong = verify(&request, at(&date), |_| Some(format!("{secret}x")));
        assert_eq!(wrong, Err(VerifyError::SignatureMismatch), "{url}");
    }
}
