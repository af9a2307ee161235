"""ContextStudy keeps every explanation (patch grids, marginals) when asked, one NPZ file per pair and model."""
import pytest
import torch
from zennit.composites import EpsilonPlus

from zennit_bilrp import BiLRP, canonizers_for
from zennit_bilrp.analysis.study import ContextStudy, load_result
from zennit_bilrp.models.small_resnet import SmallResNet
from zennit_bilrp.models.synthetic import make_pairs

pytestmark = pytest.mark.usefixtures('single_thread')


def test_saved_results_equal_direct_explanations(tmp_path):
    pairs = make_pairs(3, size=16, seed=5)
    torch.manual_seed(0)
    model = SmallResNet(widths=(4, 8)).double().eval()
    bilrp = BiLRP(model, composite=EpsilonPlus(zero_params=['bias'], canonizers=canonizers_for(model)),
                  similarity='cosine')
    study = ContextStudy({'base': bilrp}, pooling=4, batch_size=2, progress=False, save_results=True)
    study.run(pairs, str(tmp_path))
    for index in range(3):
        x_a, x_b = (pairs[index][k][None].double() for k in (0, 1))
        direct = bilrp.explain(x_a, x_b, pooling=4, marginals=True)
        kept = load_result(str(tmp_path), 'base', str(index))
        assert kept.grid_a == direct.grid_a and kept.grid_b == direct.grid_b
        torch.testing.assert_close(kept.relevance, direct.relevance, rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(kept.marginal_a, direct.marginal_a, rtol=1e-7, atol=1e-10)
        assert kept.metadata['pair'] == str(index) and kept.metadata['model'] == 'base'
    with pytest.raises(FileNotFoundError, match='save_results=True'):
        load_result(str(tmp_path), 'base', '99')
