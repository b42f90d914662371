from tunesmith.train.step import epoch_batches


def test_length_grouped_batches_cover_every_item_once_and_cut_padding():
    lengths = [(i * 37) % 50 + 1 for i in range(1000)]
    plain = epoch_batches(1000, 32, data_seed=0, epoch=0)
    grouped = epoch_batches(1000, 32, data_seed=0, epoch=0, lengths=lengths)
    for batches in (plain, grouped):
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1000))
        assert [len(b) for b in batches[:-1]] == [32] * 31 and len(batches[-1]) == 8

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(grouped) < 0.7 * padded(plain)
    assert grouped == epoch_batches(1000, 32, data_seed=0, epoch=0, lengths=lengths)  # deterministic
    assert grouped != epoch_batches(1000, 32, data_seed=0, epoch=1, lengths=lengths)  # new each epoch
