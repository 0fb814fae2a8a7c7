//! The DDF reader over arbitrary device contents: the input is the end of a 2 MiB device
//! (where DDF keeps its anchor, headers and sections). Reading never panics; metadata it
//! accepts (and whose pieces do not overlap) is written back by tessera to a copy where it reads back the same, and a
//! container joined from it never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::ddf::{assemble, probe};

const SIZE: u64 = 2 << 20;

fuzz_target!(|data: &[u8]| {
    let data = &data[data.len().saturating_sub(SIZE as usize)..];
    let dev = MemoryDevice::new("fuzz", SIZE);
    let _ = dev.write_at(data, SIZE - data.len() as u64);
    if let Ok(Some(m)) = probe(&dev) {
        let copy = MemoryDevice::with_contents("fuzz", &dev.contents());
        // A layout whose pieces overlap is refused, not written.
        if m.write(&copy).is_err() {
            return;
        }
        let again = probe(&copy).expect("written back, it reads").expect("an anchor");
        assert_eq!(again.virt, m.virt);
        assert_eq!(again.phys, m.phys);
        assert_eq!(again.configs, m.configs);
        for c in assemble(vec![("a".into(), m.clone()), ("b".into(), again)]) {
            for s in &c.subarrays {
                let _ = (s.health(), s.name(), s.level_name());
            }
        }
    }
});
