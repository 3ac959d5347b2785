"""`SpaceService`, the behaviour behind each control, and the app's error wrapper: what the status lines say."""

import gradio as gr
import pytest

from hf_mltm.space import SpaceInputError, SpaceService

pytestmark = pytest.mark.usefixtures("one_thread")


def test_explore_names_exactly_the_clips_and_captions_left_mostly_untransported(service, gallery_clips):
    names = [clip.display_name for clip in gallery_clips[:4]]
    status, _, rows = service.explore(names, "a dog\nrain on a roof\nbirds", 0.05, 0.4)
    left_out = [row[1] for row in rows if row[3] >= 50]
    assert left_out  # with 40 % of the mass transported, someone keeps most of its capacity
    assert status.endswith("Left mostly untransported: " + "; ".join(left_out) + ".")
    transported = [row[2] for row in rows if row[0] == "clip"]
    assert sum(transported) / len(transported) == pytest.approx(40.0, abs=0.1)


def test_explore_with_the_full_mass_reports_no_left_out(service, gallery_clips):
    status, _, rows = service.explore([clip.display_name for clip in gallery_clips[:2]], "a dog", 0.1, 1.0)
    assert status == "Plan between 2 clips and 1 caption (epsilon 0.1, mass 1)."
    assert [row[3] for row in rows] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("call", "message"),
    [(lambda s: s.search("dog", "distance", "many"), "The number of results must be a whole number, got 'many'"),
     (lambda s: s.explore(["a", "b"], "x", "sharp", 1.0), "epsilon and mass must be numbers"),
     (lambda s: s.add_uploads([], None), "No clip to add"),
     (lambda s: s.image_text(None, "a", "first", "none"), "No picture"),
     (lambda s: SpaceService(s.gallery).image_text("x.png", "a", 1, "none"), "No image-text model is loaded")],
)
def test_service_turns_unusable_values_into_messages(service, call, message):
    with pytest.raises(SpaceInputError, match=message):
        call(service)


def test_the_app_shows_input_errors_as_messages_and_hides_other_errors(app_module):
    def broken(kind):
        raise {"input": SpaceInputError("Type a caption."), "value": ValueError("bad shape"),
               "bug": ZeroDivisionError("division by zero")}[kind]

    wrapped = app_module.friendly(broken)
    for kind, text in [("input", "Type a caption."), ("value", "This input cannot be used: bad shape"),
                       ("bug", "Something went wrong on the server (ZeroDivisionError); try another input.")]:
        with pytest.raises(gr.Error) as caught:
            wrapped(kind)
        assert caught.value.message == text
