//! The config parser on arbitrary text: never a panic; a config it accepts plans on every
//! host it names, and parses the same again.

use gateway::config::Config;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = Config::parse("fuzz.json", text) else {
        return;
    };
    let plans: Vec<String> = c
        .hosts()
        .iter()
        .map(|h| gateway::plan::render(&c, h))
        .collect();
    let again = Config::parse("fuzz.json", text).expect("accepted once, accepted again");
    let replans: Vec<String> = again
        .hosts()
        .iter()
        .map(|h| gateway::plan::render(&again, h))
        .collect();
    assert_eq!(plans, replans, "the same config planned differently");
}
