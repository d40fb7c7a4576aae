//! The field-table checker on arbitrary input. It exists so the recursive codec parser
//! only sees bounded nesting: whatever it accepts must parse without blowing the stack,
//! and a table that parses must encode back to something the checker accepts again.
#![no_main]

use amq_protocol::frame::WriteContext;
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use libfuzzer_sys::fuzz_target;
use warrenmq::protocol::table::{check_field_table, header_table_offset, method_table_offset};

fuzz_target!(|data: &[u8]| {
    let [depth, class, method, rest @ ..] = data else {
        return;
    };
    let depth = usize::from(depth % 16) + 1;
    if let Some(off) = method_table_offset(rest, u16::from(*class), u16::from(*method)) {
        assert!(off <= rest.len());
    }
    let _ = header_table_offset(rest);
    if check_field_table(rest, depth).is_err() {
        return;
    }
    let Ok((_, table)) = parse_field_table(rest) else {
        return;
    };
    let encoded =
        gen_field_table(&table)(WriteContext::from(Vec::new())).map(|ctx| ctx.into_inner().0);
    if let Ok(bytes) = encoded {
        assert!(
            check_field_table(&bytes, depth).is_ok(),
            "re-encoded table refused: {table:?}"
        );
    }
});
