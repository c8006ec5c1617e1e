use super::*;

fn write(dir: &std::path::Path, dtype: Dtype, docs: &[Vec<u32>]) -> (std::path::PathBuf, String) {
    let path = dir.join("s.bin");
    let mut w = ShardWriter::create(&path, dtype, [7u8; 32]).unwrap();
    for (i, d) in docs.iter().enumerate() {
        w.push(
            d,
            Source {
                file: 3,
                row: i as u64 * 2,
            },
        )
        .unwrap();
    }
    let sum = w.finish().unwrap();
    (path, sum)
}

#[test]
fn round_trip_both_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let docs = vec![vec![1, 5, 31999, 2], vec![], vec![1, 2, 3]];
    for dtype in [Dtype::U16, Dtype::U32] {
        let (path, sum) = write(dir.path(), dtype, &docs);
        let s = Shard::open(&path).unwrap();
        s.verify().unwrap();
        assert_eq!(s.checksum_hex(), sum);
        assert_eq!(s.n_docs(), 3);
        assert_eq!(s.n_tokens(), 7);
        assert_eq!(s.tokenizer_sha256(), hex::encode([7u8; 32]));
        for (i, d) in docs.iter().enumerate() {
            assert_eq!(&s.doc(i), d);
            assert_eq!(
                s.doc_source(i),
                Source {
                    file: 3,
                    row: i as u64 * 2
                }
            );
        }
        assert!(!super::writer::tmp_path(&path).exists());
    }
}

#[test]
fn same_input_same_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let docs = vec![vec![10, 20, 30], vec![40]];
    let (pa, _) = write(a.path(), Dtype::U16, &docs);
    let (pb, _) = write(b.path(), Dtype::U16, &docs);
    assert_eq!(std::fs::read(pa).unwrap(), std::fs::read(pb).unwrap());
}

#[test]
fn id_too_wide_for_u16_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::create(&dir.path().join("x.bin"), Dtype::U16, [0; 32]).unwrap();
    let err = w
        .push(&[70000], Source { file: 0, row: 0 })
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.bin") && err.contains("70000"), "{err}");
}

#[test]
fn flipped_byte_is_detected_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write(dir.path(), Dtype::U16, &[vec![1, 2, 3, 4, 5]]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = Shard::open(&path)
        .unwrap()
        .verify()
        .unwrap_err()
        .to_string();
    assert!(err.contains("s.bin") && err.contains("checksum"), "{err}");
}

#[test]
fn truncated_shard_is_rejected_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write(dir.path(), Dtype::U32, &[vec![1, 2, 3, 4, 5]]);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 20]).unwrap();
    let err = Shard::open(&path).err().expect("must fail").to_string();
    assert!(err.contains("s.bin"), "{err}");
}

#[test]
fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.bin");
    {
        let mut w = ShardWriter::create(&path, Dtype::U16, [0; 32]).unwrap();
        w.push(&[1, 2], Source { file: 0, row: 0 }).unwrap();
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

/// Copying documents from a shard gives the bytes of pushing them one by one; a dtype
/// mismatch or a range past the end is an error.
#[test]
fn push_docs_from_equals_pushing_each_document() {
    let dir = tempfile::tempdir().unwrap();
    let docs = vec![vec![1, 5, 31999, 2], vec![], vec![1, 2, 3], vec![9, 9]];
    for dtype in [Dtype::U16, Dtype::U32] {
        let (src, _) = write(dir.path(), dtype, &docs);
        let from = Shard::open(&src).unwrap();
        let (one, two) = (dir.path().join("one.bin"), dir.path().join("two.bin"));
        let mut w = ShardWriter::create(&one, dtype, [7u8; 32]).unwrap();
        for d in 1..4 {
            w.push(&from.doc(d), from.doc_source(d)).unwrap();
        }
        w.finish().unwrap();
        let mut w = ShardWriter::create(&two, dtype, [7u8; 32]).unwrap();
        w.push_docs_from(&from, 1..3).unwrap();
        w.push_docs_from(&from, 3..3).unwrap();
        w.push_docs_from(&from, 3..4).unwrap();
        assert!(w.push_docs_from(&from, 3..5).is_err());
        w.finish().unwrap();
        assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
        let other = if dtype == Dtype::U16 {
            Dtype::U32
        } else {
            Dtype::U16
        };
        let mut w = ShardWriter::create(&dir.path().join("x.bin"), other, [7u8; 32]).unwrap();
        assert!(w.push_docs_from(&from, 0..1).is_err());
    }
}
