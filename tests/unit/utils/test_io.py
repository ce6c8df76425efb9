"""utils.io: figures saved as PNG and PDF."""

from __future__ import annotations

from matplotlib.figure import Figure

from utils.io import save_figure


def test_a_figure_is_saved_in_both_formats_and_laid_out_once(tmp_path):
    figure = Figure(figsize=(4, 3), layout="constrained")
    axes = figure.subplots(1, 2)
    image = axes[0].imshow([[0, 1], [2, 3]])
    figure.colorbar(image, ax=axes[0], label="loss")
    axes[1].plot([0, 1], [1, 0])
    axes[1].set_ylabel("a long label that moves the axes")
    engine, layouts = figure.get_layout_engine(), []
    execute = engine.execute
    engine.execute = lambda fig: layouts.append([ax.get_position().bounds for ax in fig.axes]) or execute(fig)
    save_figure(tmp_path / "curves", figure)
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "curves.pdf").read_bytes().startswith(b"%PDF")
    assert len(layouts) == 1  # for the PNG; the PDF keeps its positions
    assert [ax.get_position().bounds for ax in figure.axes] != layouts[0]  # where the layout moved them
