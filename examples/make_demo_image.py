"""Draw the demo picture (a house, a tree and the sun) into examples/assets/demo.png."""

from pathlib import Path

from PIL import Image, ImageDraw


def draw(path: Path, size=(480, 360)) -> Path:
    image = Image.new("RGB", size, (135, 196, 235))
    pen = ImageDraw.Draw(image)
    pen.rectangle([0, 260, size[0], size[1]], fill=(88, 160, 72))
    pen.ellipse([380, 30, 450, 100], fill=(250, 210, 60))
    pen.rectangle([90, 170, 230, 280], fill=(190, 90, 70))
    pen.polygon([(75, 175), (160, 100), (245, 175)], fill=(120, 60, 50))
    pen.rectangle([145, 220, 175, 280], fill=(90, 60, 40))
    pen.rectangle([300, 190, 318, 280], fill=(110, 80, 50))
    pen.ellipse([265, 120, 355, 210], fill=(40, 120, 50))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


if __name__ == "__main__":
    print(draw(Path(__file__).parent / "assets" / "demo.png"))
